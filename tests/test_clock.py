"""One clock for time rules (revorch/clock.py): on a quiet night, with no new event, the
scheduled scans still escalate what time alone made due; the data clock replays alike."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from conftest import event
from orch_assets.governance.assets import (
    APPROVAL_QUEUE,
    AUDIT_TRAIL,
    DISPATCHED_ACTIONS,
    POLICY_VERDICTS,
    PROPOSED_ACTIONS,
    governance_assets,
)
from orch_assets.handoffs.assets import handoff_assets
from orch_assets.ingestion.assets import crm_change_log, crm_current_state
from orch_assets.publish.assets import published_state_asset
from orch_assets.schedules import PUBLISHED, approve_and_dispatch, renewal_risk_scan, sla_check
from orch_assets.stages.assets import stage_assets
from resources import (
    AgentsConfigResource,
    DispatcherResource,
    GovernanceResource,
    LandingZoneResource,
    LifecycleConfigResource,
    StateStore,
    default_resources,
)
from revorch import clock
from revorch.agents import config as agents_config
from revorch.governance import policy
from revorch.lifecycle import config as lifecycle_config
from revorch.state.migrate import MIGRATIONS_DIR

# Fixed, so the test never ages; every event happened by T - 1h (the data clock).
T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ASSETS = [crm_change_log, crm_current_state, *stage_assets, *handoff_assets, *governance_assets]
# Everything up to the dispatcher (no agents: their assets are not in this graph).
MAIN = dg.AssetSelection.assets(*ASSETS) - dg.AssetSelection.assets(governance_assets[-1])
# The scheduled jobs as they run (the analysts' copy left out), and the governance steps the
# automation sensor runs eagerly after a handoff table changed.
GRAPH = [*ASSETS, published_state_asset(deps=[])]


def scheduled(job: dg.UnresolvedAssetJobDefinition) -> dg.AssetSelection:
    return dg.AssetSelection.assets(*(job.selection.resolve(GRAPH) - {PUBLISHED}))


FOLLOWERS = dg.AssetSelection.assets(PROPOSED_ACTIONS, POLICY_VERDICTS)
SLA_CHECK = scheduled(sla_check) | FOLLOWERS
RENEWAL_SCAN = scheduled(renewal_risk_scan) | FOLLOWERS
# The hourly approval SLA check is approve_and_dispatch with no review in its config.
APPROVAL_SLA_CHECK = scheduled(approve_and_dispatch)
assert APPROVAL_SLA_CHECK.resolve(ASSETS) == {APPROVAL_QUEUE, DISPATCHED_ACTIONS, AUDIT_TRAIL}


def at(hours: float) -> str:
    return (T + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def day(days: int) -> str:
    return (T + timedelta(days=days)).date().isoformat()


class Night:
    """A small CRM in a landing zone and a state store, run through real Dagster runs."""

    def __init__(self, tmp_path, zone):
        self.db = tmp_path / "revorch.duckdb"
        self.zone = zone
        self.outbox = tmp_path / "outbox.jsonl"
        self.anchor = tmp_path / "anchors.jsonl"
        self.instance = dg.DagsterInstance.ephemeral()
        self.clock = clock.WALL

    def run(self, clock_setting: str, selection: dg.AssetSelection) -> dict:
        """Materialize ``selection`` with the rule clock set; return each asset's metadata."""
        self.clock = clock_setting
        result = dg.materialize(
            ASSETS,
            selection=selection,
            instance=self.instance,
            resources={
                "state_store": StateStore(database=str(self.db), clock=clock_setting),
                "landing_zone": LandingZoneResource(path=str(self.zone.root)),
                "lifecycle": LifecycleConfigResource(path=str(lifecycle_config.DEFAULT_PATH)),
                "governance": GovernanceResource(
                    policy_path=str(policy.DEFAULT_PATH), audit_anchor_path=str(self.anchor)
                ),
                "dispatcher": DispatcherResource(outbox_path=str(self.outbox)),
                "agents": AgentsConfigResource(path=str(agents_config.DEFAULT_PATH)),
            },
        )
        assert result.success
        return {
            e.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()
        }

    def rows(self, sql: str, *parameters) -> list[tuple]:
        with duckdb.connect(str(self.db), read_only=True) as conn:
            clock.bind(conn, self.clock)  # views read the clock when they are read
            return conn.execute(sql, list(parameters)).fetchall()

    def actions(self, action_type: str) -> list[tuple]:
        return self.rows(
            "SELECT entity_id, status, payload->>'$.to.owner_id' FROM governance.actions "
            "WHERE action_type = ? ORDER BY ALL",
            action_type,
        )

    def stage(self, entity_id: str) -> str:
        [(stage,)] = self.rows(
            "SELECT stage FROM stages.entity_stages WHERE entity_id = ?", entity_id
        )
        return stage


@pytest.fixture
def night(tmp_path, zone) -> Night:
    """c-1: an MQL of a strategic account since T - 2h, with a reply (a buying signal) and no
    sales touch yet; its first-touch SLA is due at T + 46h. s-2: an active subscription of
    co-2 that ends on T + 100 days, so its 90-day renewal window opens on day 10."""
    changes = [
        ("owner", "own-ae", -3, {"role": "ae", "team": "east"}),
        ("owner", "own-mgr", -3, {"role": "manager", "team": "east"}),
        ("company", "co-1", -3, {"name": "Big Co", "tier": "strategic", "owner_id": "own-ae"}),
        ("company", "co-2", -3, {"name": "Small Co", "tier": "smb", "owner_id": "own-ae"}),
        ("contact", "c-1", -3, {"company_id": "co-1", "owner_id": "own-ae",
                                "lifecycle_stage": "lead"}),
        ("contact", "c-1", -2, {"lifecycle_stage": "marketingqualifiedlead"}),
        ("activity", "a-1", -1, {"contact_id": "c-1", "activity_type": "email_replied",
                                 "activity_at": at(-1)}),
        ("subscription", "s-2", -1, {"company_id": "co-2", "status": "active", "plan": "pro",
                                     "start_date": day(-265), "end_date": day(100),
                                     "arr": 12000.0, "seats": 10, "seats_active": 9}),
    ]  # fmt: skip
    zone.write_events(
        "test",
        [
            event(f"e-{n}", object_type, object_id, at(hours), **properties)
            for n, (object_type, object_id, hours, properties) in enumerate(changes)
        ],
    )
    return Night(tmp_path, zone)


def test_a_quiet_night_escalates_an_sla_breach_and_proposes_the_action(night):
    night.run(T.isoformat(), MAIN)
    assert night.rows("SELECT status FROM handoffs.sla_escalations") == [("pending",)]
    assert night.actions("notify_manager") == []

    # No event arrives. The hourly SLA check runs again, an hour after the SLA ran out.
    meta = night.run(at(47), SLA_CHECK)
    assert meta["sla_escalations"]["breached"] == 1
    assert night.rows("SELECT status, escalate_to FROM handoffs.sla_escalations") == [
        ("breached", "own-mgr")
    ]
    assert meta["proposed_actions"]["proposed/notify_manager"] == 1
    assert night.actions("notify_manager") == [("c-1", "ready", "own-mgr")]
    assert night.rows("SELECT count(*) FROM change_log") == [(8,)]  # nothing new came


def test_the_daily_renewal_scan_opens_the_renewal_window_on_a_quiet_night(night):
    night.run(T.isoformat(), MAIN)
    assert night.stage("co-2") == "adoption"
    assert night.rows("SELECT count(*) FROM stages.renewals") == [(0,)]

    night.run(at(24 * 9), RENEWAL_SCAN)  # day 9: not yet
    assert night.stage("co-2") == "adoption"

    night.run(at(24 * 11), RENEWAL_SCAN)  # day 11: inside the window, no event arrived
    assert night.stage("co-2") == "renewal"
    assert night.rows(
        "SELECT rule, transitioned_at FROM stages.stage_transitions "
        "WHERE entity_id = 'co-2' ORDER BY seq DESC LIMIT 1"
    ) == [("renewal_window", datetime.fromisoformat(day(10)).replace(tzinfo=UTC))]
    assert night.rows("SELECT subscription_id, days_to_renewal FROM stages.renewals") == [
        ("s-2", 89)
    ]

    # Set back (a replay at an earlier moment): the move that fell due is undone.
    night.run(T.isoformat(), RENEWAL_SCAN)
    assert night.stage("co-2") == "adoption"


def test_the_data_clock_replays_history_alike_however_late_it_runs(night):
    tables = (
        "SELECT * FROM stages.entity_stages ORDER BY ALL",
        "SELECT * FROM stages.stage_transitions ORDER BY ALL",
        "SELECT * EXCLUDE (first_touch_at) FROM handoffs.sla_escalations ORDER BY ALL",
        "SELECT action_id, status FROM governance.actions ORDER BY ALL",
    )
    night.run(clock.DATA, MAIN)
    before = [night.rows(sql) for sql in tables]
    for selection in (SLA_CHECK, RENEWAL_SCAN, APPROVAL_SLA_CHECK):
        meta = night.run(clock.DATA, selection)
    assert [night.rows(sql) for sql in tables] == before
    assert meta["approval_queue"]["escalated"] == 0
    # "Now" is the newest change received: the SLA is still pending, the window still shut.
    assert night.rows("SELECT status FROM handoffs.sla_escalations") == [("pending",)]
    assert night.stage("co-2") == "adoption"


def test_an_approval_past_its_sla_escalates_when_the_clock_moves(night):
    night.run(T.isoformat(), MAIN)
    # A follow-up to a strategic account's contact waits for a person, due in 24 hours.
    [(action_id, due)] = night.rows(
        "SELECT action_id, approval_due_at FROM governance.actions "
        "WHERE status = 'pending_approval' AND action_type = 'send_follow_up'"
    )
    assert due == T + timedelta(hours=24)

    assert night.run(at(23), APPROVAL_SLA_CHECK)["approval_queue"]["escalated"] == 0
    meta = night.run(at(25), APPROVAL_SLA_CHECK)
    assert meta["approval_queue"]["escalated"] == 1
    assert night.actions("notify_approver") == [("c-1", "sent", None)]
    sent = [json.loads(line) for line in night.outbox.read_text().splitlines()]
    assert [m["action_id"] for m in sent if m["action_type"] == "notify_approver"] == [
        f"esc-{action_id}"
    ]
    # Escalated once: the next hourly check finds nothing new.
    assert night.run(at(26), APPROVAL_SLA_CHECK)["approval_queue"]["escalated"] == 0


def test_the_clock_is_configuration_with_clear_errors(monkeypatch, tmp_path):
    conn = duckdb.connect()
    conn.execute("CREATE TABLE change_log (occurred_at TIMESTAMPTZ)")
    conn.execute("CREATE MACRO data_clock() AS (SELECT max(occurred_at) FROM change_log)")
    conn.execute((MIGRATIONS_DIR / "0006_clock.sql").read_text().split(";")[0])  # clock_now()
    before = datetime.now(UTC)
    assert before <= clock.now(conn) <= datetime.now(UTC)  # unbound: the wall clock
    clock.bind(conn, "2026-03-02T09:00:00+01:00")
    assert clock.now(conn) == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    conn.execute("INSERT INTO change_log VALUES ('2025-05-01 00:00:00+00')")
    clock.bind(conn, " Data ")
    assert clock.now(conn) == datetime(2025, 5, 1, tzinfo=UTC)
    ahead = datetime.now(UTC) + timedelta(hours=2)  # a source whose clock runs fast
    conn.execute("INSERT INTO change_log VALUES (?)", [ahead])
    clock.bind(conn, "wall")
    assert clock.now(conn) == ahead  # the wall clock is never behind the newest change
    for wrong in ("tomorrow", "2026-03-02T09:00:00", "now"):
        with pytest.raises(clock.ClockError, match="wall', 'data' or an ISO 8601 instant"):
            clock.bind(conn, wrong)

    # REVORCH_CLOCK reaches the state store when a run starts.
    @dg.asset
    def clock_setting(state_store: StateStore) -> str:
        with state_store.get_connection() as conn:
            return conn.execute("SELECT getvariable('revorch_clock')").fetchone()[0]

    monkeypatch.setenv("REVORCH_HOME", str(tmp_path))
    for setting, expected in (("data", "data"), (None, "wall")):
        if setting:
            monkeypatch.setenv("REVORCH_CLOCK", setting)
        else:
            monkeypatch.delenv("REVORCH_CLOCK")
        result = dg.materialize([clock_setting], resources=default_resources())
        assert result.output_for_node("clock_setting") == expected


@pytest.mark.parametrize(
    "time_zone", ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"]
)
def test_days_between_counts_the_midnights_date_diff_counts(time_zone):
    """days_between (migration 0016) casts to local timestamps before counting days, which
    costs a twentieth of ICU's date_diff on TIMESTAMPTZ; both count the same midnights,
    whatever the time zone, across DST changes (half-hour ones included) and both ways."""
    from revorch.state.migrate import migrate

    conn = duckdb.connect()
    migrate(conn)
    conn.execute(f"SET TimeZone = '{time_zone}'")
    # Pairs of instants an hour apart to two years apart, starting at every 37 minutes of
    # a year that holds two DST changes in each zone that has them.
    differ, pairs = conn.execute(
        """
        WITH starts AS (
            SELECT TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_minutes(m) AS a
            FROM range(0, 366 * 24 * 60, 37) AS t(m)
        ), pairs AS (
            SELECT a, a + to_hours(h) AS b FROM starts, unnest([1, 5, 23, 25, 49, 24 * 400]) AS u(h)
        )
        SELECT count(*) FILTER (WHERE days_between(a, b) <> date_diff('day', a, b)
                                   OR days_between(b, a) <> date_diff('day', b, a)),
               count(*)
        FROM pairs
        """
    ).fetchone()
    assert pairs > 80_000
    assert differ == 0
