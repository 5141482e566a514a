"""Stage tables kept by key (stages.onboarding, stages.adoption_health,
stages.waiting_references) recompute only the keys
touched since their last run, and give what a full recompute gives after every run of a
sequence of changes, deletions and clock moves (forward over the look-back edge, back, and
forward again). Views whose SQL did not change are not created again."""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
import pytest

from conftest import CrmHome, event, ingest_and_stage, read_state
from revorch.definitions import materialize
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history

CRM = SimulationConfig(contacts=400, seed=11, end="2026-06-30")
KEYED = dg.AssetSelection.assets(["stages", "onboarding"], ["stages", "adoption_health"])
COMPARED = {
    "stages.onboarding": "deal_id",
    "stages.adoption_health": "subscription_id",
    "stages.onboarding_progress": "deal_id",
    "stages.renewals": "subscription_id",
}


def instant(day: datetime) -> str:
    return day.isoformat().replace("+00:00", "Z")


def tables(database) -> dict[str, list[tuple]]:
    with read_state(database) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY {key}").fetchall()
            for t, key in COMPARED.items()
        }


def assert_equals_full_recompute(database, zone, clock_setting, state_copy) -> None:
    """The incremental tables equal a full recompute, made on a copy at the same clock."""
    with state_copy(database, database.with_name("full.duckdb")) as copy:
        materialize(
            KEYED | dg.AssetSelection.assets(["stages", "renewals"]),
            database=copy,
            landing=zone.root,
            clock=clock_setting,
            full_rebuild=True,
        )
        full = tables(copy)
    incremental = tables(database)
    for table in COMPARED:
        assert incremental[table] == full[table], table


def recomputed(metadata) -> dict[str, tuple[int, str]]:
    return {
        name: (metadata[name]["keys_recomputed"], metadata[name]["recomputed_because"])
        for name in ("stages/onboarding", "stages/adoption_health")
    }


@pytest.fixture
def crm(tmp_path):
    zone = LandingZone(tmp_path / "landing").ensure()
    simulate_history(zone, CRM)
    return tmp_path / "revorch.duckdb", zone


def test_incremental_keyed_stages_equal_a_full_recompute_through_changes_and_clock_moves(
    crm, state_copy
):
    database, zone = crm
    start = datetime.fromisoformat("2026-05-01T09:00:00+00:00")
    first = recomputed(ingest_and_stage(database, zone, clock_setting=instant(start)))
    assert {why for _, why in first.values()} == {"first_run"}
    with read_state(database) as conn:
        deals = conn.execute("SELECT count(*) FROM deals").fetchone()[0]
        subscriptions = conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0]
        won, company = conn.execute(
            "SELECT deal_id, company_id FROM stages.onboarding ORDER BY deal_id LIMIT 1"
        ).fetchone()
        [healthy, other] = [
            r[0]
            for r in conn.execute(
                "SELECT subscription_id FROM stages.adoption_health ORDER BY subscription_id "
                "LIMIT 2"
            ).fetchall()
        ]
        owner = conn.execute("SELECT min(id) FROM owners WHERE role = 'csm'").fetchone()[0]
    assert first["stages/onboarding"][0] == deals
    assert first["stages/adoption_health"][0] == subscriptions

    # Changes: seat use falls, angry tickets arrive, a subscription and a won deal are deleted.
    day = "2026-07-01T00:00:00Z"  # after the whole history: these changes are the newest
    zone.write_events(
        "test",
        [
            event("k-1", "subscription", healthy, day, seats_active=1),
            event(
                "k-2",
                "ticket",
                "t-k-2",
                day,
                company_id=company,
                priority="urgent",
                status="open",
                created_at=day,
            ),
            event(
                "k-3",
                "ticket",
                "t-k-3",
                day,
                company_id=company,
                priority="high",
                status="open",
                created_at=day,
            ),
            {**event("k-4", "subscription", other, day), "op": "delete"},
            {**event("k-5", "deal", won, day), "op": "delete"},
        ],
    )
    later = start + timedelta(days=10)  # the clock moves over the look-back edge too
    changed = recomputed(ingest_and_stage(database, zone, clock_setting=instant(later)))
    assert changed["stages/onboarding"][0] < deals  # only what the changes touched
    assert changed["stages/adoption_health"][0] < subscriptions
    assert changed["stages/adoption_health"][0] >= 2  # the changed and the deleted one
    assert_equals_full_recompute(database, zone, instant(later), state_copy)
    after = tables(database)
    assert won not in {row[0] for row in after["stages.onboarding"]}
    assert other not in {row[0] for row in after["stages.adoption_health"]}

    # Nothing new and the clock goes back: only what the clock went back over.
    back = start + timedelta(days=3)
    went_back = recomputed(ingest_and_stage(database, zone, clock_setting=instant(back)))
    assert went_back["stages/onboarding"] == (0, "changed")
    assert_equals_full_recompute(database, zone, instant(back), state_copy)

    # An owner changes (every CSM assignment may move) and the clock jumps past the window.
    zone.write_events("test", [event("k-6", "owner", owner, day, is_active=False)])
    jump = start + timedelta(days=120)
    jumped = recomputed(ingest_and_stage(database, zone, clock_setting=instant(jump)))
    assert jumped["stages/onboarding"][0] == deals  # every deal (the deleted one is kept)
    assert_equals_full_recompute(database, zone, instant(jump), state_copy)


def test_views_are_not_created_again_when_their_sql_did_not_change(crm):
    database, zone = crm
    ingest_and_stage(database, zone, clock_setting="2026-05-01T09:00:00Z")
    with CrmHome(database.parent).connect() as conn:  # the file database, or this test's lake
        made = dict(conn.execute("SELECT name, updated_at FROM stages.sql_versions").fetchall())
        assert "stages.leads" in made and "stages.renewals" in made
        # A view changed by hand (its hash no longer matches) is made again.
        conn.execute("UPDATE stages.sql_versions SET sql_hash = 'x' WHERE name = 'stages.leads'")
    ingest_and_stage(database, zone, clock_setting="2026-05-02T09:00:00Z")
    with read_state(database) as conn:
        again = dict(conn.execute("SELECT name, updated_at FROM stages.sql_versions").fetchall())
    assert again["stages.renewals"] == made["stages.renewals"]
    assert again["stages.leads"] > made["stages.leads"]


WAITING = dg.AssetSelection.assets(["stages", "waiting_references"])


def waiting(database) -> list[tuple]:
    with read_state(database) as conn:
        return conn.execute("SELECT * FROM stages.waiting_references ORDER BY ALL").fetchall()


def test_waiting_references_follow_the_change_and_equal_a_full_recompute(tmp_path, state_copy):
    zone = LandingZone(tmp_path / "landing").ensure()
    database = tmp_path / "revorch.duckdb"
    state = dg.AssetSelection.groups("ingestion", "crm_state").without_checks() | WAITING

    def run() -> tuple[int, set[tuple[str, str, str]]]:
        metadata = ingest_and_stage(database, zone, selection=state)["stages/waiting_references"]
        with state_copy(database, tmp_path / "full.duckdb") as full:
            materialize(WAITING, database=full, landing=zone.root, full_rebuild=True)
            recomputed = waiting(full)
        assert waiting(database) == recomputed
        return metadata["keys_recomputed"], {(r[0], r[1], r[4]) for r in waiting(database)}

    day, later = "2026-05-01T00:00:00Z", "2026-05-02T00:00:00Z"
    zone.write_events(
        "test",
        [
            event("w-1", "contact", "c-1", day, company_id="co-1", owner_id="o-1"),
            event("w-2", "contact", "c-2", day, company_id="co-2"),
            event("w-3", "deal", "d-1", day, company_id="co-1", contact_id="c-1"),
            event("w-4", "company", "co-9", day, name="Other"),
        ],
    )
    assert run()[1] == {
        ("contact", "c-1", "co-1"),
        ("contact", "c-1", "o-1"),
        ("contact", "c-2", "co-2"),
        ("deal", "d-1", "co-1"),
    }
    # The company arrives, a contact names another missing one, a waiting deal is deleted.
    zone.write_events(
        "test",
        [
            event("w-5", "company", "co-1", later, name="Acme"),
            event("w-6", "contact", "c-2", later, company_id="co-3"),
            {**event("w-7", "deal", "d-1", later), "op": "delete"},
        ],
    )
    keys, rows = run()
    assert rows == {("contact", "c-1", "o-1"), ("contact", "c-2", "co-3")}
    # The three changed records and c-1, which waited for co-1; not co-9.
    assert keys == 4
    assert run()[0] == 0  # nothing new: nothing recomputed


def test_an_onboarding_gets_the_csm_its_account_hashes_to_among_those_who_had_joined(crm):
    """Each won deal's CSM is the (hash of its account mod k)-th by id of the k active CSMs who
    had joined by its close (onboarding.sql), recomputed here in Python from the store's own
    owners and deals. CSMs joining over the history make the deals' choices differ."""
    database, zone = crm
    hires = ["2025-01-15T00:00:00Z", "2025-03-15T00:00:00Z", "2025-04-10T00:00:00Z"]
    zone.write_events(
        "test",
        [
            event(f"hire-{n}", "owner", f"own-z-csm-{n}", day, role="csm", created_at=day)
            for n, day in enumerate(hires * 2)  # two CSMs a date, so dates repeat
        ],
    )
    ingest_and_stage(database, zone)
    with read_state(database) as conn:
        csms = conn.execute(
            "SELECT id, coalesce(created_at, _first_seen_at) FROM owners "
            "WHERE role = 'csm' AND coalesce(is_active, true) AND NOT _deleted ORDER BY id"
        ).fetchall()
        rows = conn.execute(
            "SELECT o.deal_id, o.owner_id, d.closed_at, hash(d.company_id) "
            "FROM stages.onboarding AS o JOIN deals AS d ON d.id = o.deal_id"
        ).fetchall()
    assert len({joined for _, joined in csms}) >= 4
    choices = set()
    for deal, owner, closed_at, account in rows:
        eligible = [csm for csm, joined in csms if joined <= closed_at]
        assert owner == (eligible[account % len(eligible)] if eligible else None), deal
        choices.add(len(eligible))
    assert len(choices) >= 3  # deals won under different sets of CSMs
