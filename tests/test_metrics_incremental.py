"""The metric tables kept by key (metrics.funnel_progress, metrics.sla_first_touches,
metrics.stage_stays) and the ARR history metrics.subscription_arr follow the change: after
every run of a sequence of changes (a lead source changed, a contact and a subscription
deleted, an activity moved to another contact, a deal won, events that arrive before the
record they name and events dated before the newest), they, and every metric view over them,
equal a full recompute; and a run recomputes only the contacts and accounts touched."""

from __future__ import annotations

import dagster as dg
import pytest

from conftest import event, read_state
from revorch.definitions import materialize
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history

CRM = SimulationConfig(contacts=300, seed=7, end="2026-06-30")
METRICS = dg.AssetSelection.assets(
    ["metrics", "funnel_conversion"],
    ["metrics", "stage_velocity"],
    ["metrics", "sla_compliance"],
    ["metrics", "revenue_retention"],
)
RUN = (
    dg.AssetSelection.groups("ingestion", "crm_state").without_checks()
    | dg.AssetSelection.assets(["stages", "contact_lifecycle"], ["stages", "account_lifecycle"])
    | METRICS
)
TABLES = {
    "metrics.funnel_progress": "contact_id",
    "metrics.sla_first_touches": "contact_id, seq",
    "metrics.stage_stays": "entity_key, seq",
    "metrics.subscription_arr": "event_id",
}
VIEWS = [
    "metrics.funnel_conversion",
    "metrics.stage_velocity",
    "metrics.sla_entries",
    "metrics.sla_compliance",
    "metrics.revenue_retention_accounts",
    "metrics.revenue_retention",
]
CLOCK = "2026-07-02T00:00:00Z"  # a fixed clock: views that read it compare equal


def exact(rows: list[tuple]) -> list[tuple]:
    """Floats to 9 significant digits: a sum or mean of floats depends on the order it reads
    its rows in (the last bit), which neither run fixes."""
    return [tuple(float(f"{v:.9g}") if isinstance(v, float) else v for v in r) for r in rows]


def contents(database) -> dict[str, list[tuple]]:
    with read_state(database) as conn:
        conn.execute(f"SET VARIABLE revorch_clock = '{CLOCK}'")
        found = {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY {k}").fetchall() for t, k in TABLES.items()
        }
        found |= {
            v: exact(conn.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall()) for v in VIEWS
        }
        return found


def run(database, zone, state_copy) -> dict[str, dict]:
    """One incremental run; asserts it equals a full recompute made on a copy."""
    result = materialize(RUN, database=database, landing=zone.root, clock=CLOCK)
    metadata = {
        "/".join(e.asset_key.path): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    with state_copy(database, database.with_name("full.duckdb")) as copy:
        materialize(METRICS, database=copy, landing=zone.root, clock=CLOCK, full_rebuild=True)
        full = contents(copy)
    incremental = contents(database)
    for name in [*TABLES, *VIEWS]:
        assert incremental[name] == full[name], name
    return metadata


@pytest.fixture
def crm(tmp_path):
    zone = LandingZone(tmp_path / "landing").ensure()
    simulate_history(zone, CRM)
    return tmp_path / "revorch.duckdb", zone


def test_metric_tables_follow_the_change_and_equal_a_full_recompute(crm, state_copy):
    database, zone = crm
    first = run(database, zone, state_copy)
    with read_state(database) as conn:
        contacts = conn.execute("SELECT count(*) FROM metrics.funnel_progress").fetchone()[0]
        [kept, moved_from, moved_to, gone] = [
            r[0]
            for r in conn.execute(
                "SELECT contact_id FROM metrics.sla_first_touches WHERE first_touch_at IS NOT NULL "
                "GROUP BY contact_id ORDER BY contact_id LIMIT 4"
            ).fetchall()
        ]
        # The touch moves to a contact it becomes the first touch of: a minute after its
        # first SLA entry.
        entered = conn.execute(
            "SELECT min(entered_at) + INTERVAL 1 MINUTE FROM metrics.sla_first_touches "
            "WHERE contact_id = ?",
            [moved_to],
        ).fetchone()[0]
        touch = conn.execute(
            "SELECT id FROM activities WHERE contact_id = ? AND activity_type IN "
            "('email_sent', 'call', 'meeting') ORDER BY activity_at LIMIT 1",
            [moved_from],
        ).fetchone()[0]
        [deal] = conn.execute(
            "SELECT id FROM deals WHERE deal_type = 'new_business' "
            "AND stage NOT IN ('closedwon', 'closedlost') AND contact_id IS NOT NULL LIMIT 1"
        ).fetchone()
        subscription = conn.execute("SELECT min(id) FROM subscriptions").fetchone()[0]
    assert first["metrics/funnel_conversion"]["contacts_recomputed"] == contacts
    assert first["metrics/revenue_retention"]["arr_changes_added"] > 0

    # Changes dated before the newest ones (out of order), a deletion, an activity moved from
    # one contact to another, a deal won, a lead source changed, an ARR change, and an
    # activity that names a contact whose record arrives only in the next batch.
    early = "2026-03-01T00:00:00Z"
    zone.write_events(
        "test",
        [
            event("m-1", "contact", kept, early, lead_source="partner"),
            {**event("m-2", "contact", gone, "2026-06-30T12:00:00Z"), "op": "delete"},
            event(
                "m-3",
                "activity",
                touch,
                "2026-06-30T06:00:00Z",  # after the activity's own later changes
                contact_id=moved_to,
                activity_at=entered.isoformat(),
            ),
            event(
                "m-4",
                "deal",
                deal,
                "2026-06-29T00:00:00Z",
                stage="closedwon",
                closed_at="2026-06-29T00:00:00Z",
            ),
            event("m-5", "subscription", subscription, early, arr=12345.0),
            event(
                "m-6",
                "activity",
                "a-m-6",
                "2026-06-30T00:00:00Z",
                contact_id="c-late",
                activity_type="meeting",
                activity_at="2026-06-30T00:00:00Z",
            ),
        ],
    )
    changed = run(database, zone, state_copy)
    recomputed = changed["metrics/funnel_conversion"]["contacts_recomputed"]
    assert 0 < recomputed < contacts  # only what the changes touched
    assert changed["metrics/sla_compliance"]["contacts_recomputed"] == recomputed
    assert 0 < changed["metrics/stage_velocity"]["entities_recomputed"] < contacts
    assert changed["metrics/revenue_retention"]["arr_changes_added"] == 1
    with read_state(database) as conn:
        assert conn.execute(
            "SELECT lead_source FROM metrics.funnel_progress WHERE contact_id = ?", [kept]
        ).fetchone() == ("partner",)
        assert conn.execute(
            "SELECT min(first_touch_at) FROM metrics.sla_first_touches WHERE contact_id = ?",
            [moved_to],
        ).fetchone() == (entered,)
        assert conn.execute(
            "SELECT count(*) FROM metrics.funnel_progress WHERE contact_id = ?", [gone]
        ).fetchone() == (0,)

    # The late contact's record arrives, dated before its activity; then nothing new.
    zone.write_events(
        "test",
        [
            event(
                "m-7",
                "contact",
                "c-late",
                "2026-06-01T00:00:00Z",
                lead_source="event",
                lifecycle_stage="marketingqualifiedlead",
            )
        ],
    )
    arrived = run(database, zone, state_copy)
    assert arrived["metrics/funnel_conversion"]["contacts_recomputed"] >= 1
    with read_state(database) as conn:
        assert conn.execute(
            "SELECT first_touch_at IS NOT NULL FROM metrics.sla_first_touches "
            "WHERE contact_id = 'c-late' AND stage = 'mql'"
        ).fetchone() == (True,)
    quiet = run(database, zone, state_copy)
    assert quiet["metrics/funnel_conversion"]["contacts_recomputed"] == 0
    assert quiet["metrics/stage_velocity"]["entities_recomputed"] == 0
    assert quiet["metrics/revenue_retention"]["arr_changes_added"] == 0
