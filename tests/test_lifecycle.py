"""The lifecycle on real changes: every transition rule, the forbidden path, each handoff,
and a full rebuild equal to the incremental runs."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from conftest import CountingConnection, event, ingest_and_stage
from revorch import clock
from revorch.ingestion.change_log import ingest_pending
from revorch.ingestion.current_state import refresh_current_state
from revorch.lifecycle.config import load_lifecycle_config
from revorch.lifecycle.runner import refresh_account_lifecycle, refresh_contact_lifecycle
from revorch.simulator import SimulationConfig, simulate_history

CONFIG = load_lifecycle_config()
T0 = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)  # early enough that day 400 is not in the future


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Crm:
    """Writes changes into the landing zone and runs the asset graph up to the handoffs."""

    def __init__(self, conn, db_path, zone):
        self.conn, self.db_path, self.zone, self.events, self.n = conn, db_path, zone, [], 0

    def change(self, object_type, object_id, day, **properties):
        self.n += 1
        self.events.append(event(f"t-{self.n}", object_type, object_id, at(day), **properties))

    def activity(self, contact, day, kind, url=None, owner="own-ae"):
        self.n += 1
        self.change(
            "activity",
            f"a-{self.n}",
            day,
            contact_id=contact,
            activity_type=kind,
            activity_at=at(day),
            url=url,
            owner_id=owner,
        )

    def run(self):
        self.zone.write_events("test", self.events)
        self.events = []
        landed = ingest_and_stage(self.db_path, self.zone, clock_setting=clock.DATA)
        assert landed["crm/change_log"]["quarantined"] == 0

    def stage(self, entity_id):
        row = self.conn.execute(
            "SELECT stage FROM stages.entity_stages WHERE entity_id = ?", [entity_id]
        ).fetchone()
        return row[0] if row else None

    def moves(self, entity_id):
        return self.conn.execute(
            "SELECT from_stage, to_stage, rule, decided_by FROM stages.stage_transitions "
            "WHERE entity_id = ? ORDER BY seq",
            [entity_id],
        ).fetchall()


@pytest.fixture
def crm(conn, db_path, zone):
    crm = Crm(conn, db_path, zone)
    crm.change("owner", "own-ae", 0, role="ae", team="east")
    crm.change("owner", "own-mgr", 0, role="manager", team="east")
    crm.change("owner", "own-csm", 0, role="csm", team="success")
    return crm


def test_crm_fields_move_contacts_and_name_a_human(crm):
    crm.change("contact", "c-1", 0, lifecycle_stage="lead", owner_id="own-ae")
    crm.change("contact", "c-1", 2, lifecycle_stage="marketingqualifiedlead")
    crm.change("contact", "c-1", 5, lifecycle_stage="salesqualifiedlead")
    crm.run()
    assert crm.moves("c-1") == [
        ("new", "lead", "contact_created", "rule"),
        ("lead", "mql", "crm:lifecycle_stage", "human"),
        ("mql", "sql", "crm:lifecycle_stage", "human"),
    ]


def test_engagement_qualifies_a_lead_only_within_its_window(crm):
    crm.change("contact", "c-hot", 0)
    crm.change("contact", "c-slow", 0)
    for day, kind in [(1, "email_replied"), (3, "meeting"), (4, "form_fill")]:  # 8+15+10
        crm.activity("c-hot", day, kind)
    for day, kind in [(1, "email_replied"), (40, "meeting"), (80, "email_replied")]:
        crm.activity("c-slow", day, kind)
    crm.run()
    assert crm.moves("c-hot")[-1] == ("lead", "mql", "engagement_mql", "rule")
    assert crm.stage("c-slow") == "lead"


def test_disqualified_contacts_are_recycled_by_buying_signals_after_the_wait(crm):
    for contact in ("c-early", "c-late"):
        crm.change("contact", contact, 0)
        crm.change("contact", contact, 1, lead_status="unqualified")
    crm.activity("c-early", 10, "email_replied")
    crm.activity("c-late", 45, "web_visit", url="https://example.com/pricing")
    crm.run()
    assert crm.stage("c-early") == "disqualified"
    assert crm.moves("c-late")[-2:] == [
        ("lead", "disqualified", "crm:lead_status", "human"),
        ("disqualified", "lead", "buying_signal_recycle", "rule"),
    ]


def test_deals_move_contacts_to_opportunity_customer_or_back_to_lead(crm):
    for contact, outcome in (("c-won", "closedwon"), ("c-lost", "closedlost")):
        crm.change("contact", contact, 0, lifecycle_stage="salesqualifiedlead")
        deal = f"d-{contact}"
        crm.change(
            "deal",
            deal,
            3,
            contact_id=contact,
            deal_type="new_business",
            stage="qualifiedtobuy",
            amount=10_000,
        )
        crm.change("deal", deal, 30, stage=outcome, closed_at=at(30))
    crm.run()
    assert [m[2] for m in crm.moves("c-won")][-2:] == ["deal_created", "deal_won"]
    assert crm.stage("c-won") == "customer"
    assert [m[2] for m in crm.moves("c-lost")][-2:] == ["deal_created", "deal_lost_recycle"]
    assert crm.stage("c-lost") == "lead"


def test_a_forbidden_move_is_reported_and_never_applied(crm, conn):
    crm.change("contact", "c-1", 0, lifecycle_stage="customer")
    crm.change("contact", "c-1", 5, lifecycle_stage="lead")  # a customer cannot go back
    crm.run()
    assert crm.stage("c-1") == "customer"
    forbidden = conn.execute(
        "SELECT from_stage, to_stage, rule, decided_by, attempted_at FROM "
        "stages.forbidden_transitions"
    ).fetchall()
    assert forbidden == [("customer", "lead", "crm:lifecycle_stage", "human", T0 + timedelta(5))]
    assert ("customer", "lead") not in [(m[0], m[1]) for m in crm.moves("c-1")]


def subscription(crm, sub, company, start_day, **properties):
    start = (T0 + timedelta(days=start_day)).date()
    end = (T0 + timedelta(days=start_day + 365)).date()
    crm.change(
        "subscription",
        sub,
        start_day,
        company_id=company,
        status="active",
        start_date=str(start),
        end_date=str(end),
        seats=10,
        seats_active=1,
        arr=50_000,
        **properties,
    )


def test_accounts_move_through_onboarding_adoption_renewal_and_churn(crm):
    subscription(crm, "s-active", "co-active", 0)
    crm.change("subscription", "s-active", 10, seats_active=6)  # activation at 50%
    subscription(crm, "s-slow", "co-slow", 0)  # never activates: onboarding ends by time
    subscription(crm, "s-renew", "co-renew", 0)
    subscription(crm, "s-renew-2", "co-renew", 365, renewal_of="s-renew")
    subscription(crm, "s-churn", "co-churn", 0)
    crm.change("subscription", "s-churn", 365, status="churned")
    crm.change("owner", "own-ae", 400, team="east")  # the data clock: day 400
    crm.run()
    assert [m[2] for m in crm.moves("co-active")] == [
        "subscription_started",
        "activated",
        "renewal_window",
    ]
    assert [m[2] for m in crm.moves("co-slow")][:2] == [
        "subscription_started",
        "onboarding_period_over",
    ]
    assert [m[2] for m in crm.moves("co-renew")][-1] == "renewed"
    assert crm.stage("co-renew") == "adoption"
    assert crm.moves("co-churn")[-1] == ("renewal", "churned", "crm:subscription_status", "human")


def test_time_based_moves_happen_when_time_passes_without_changes_to_the_account(crm):
    subscription(crm, "s-1", "co-1", 0)
    crm.change("owner", "own-ae", 20, team="east")
    crm.run()
    assert crm.stage("co-1") == "onboarding"
    crm.change("owner", "own-ae", 60, team="east")  # only the clock moves
    crm.run()
    assert crm.moves("co-1")[-1][2] == "onboarding_period_over"


def test_closed_won_starts_onboarding_with_an_owner_and_tasks(crm, conn):
    crm.change("deal", "d-1", 0, company_id="co-1", deal_type="new_business", stage="contractsent")
    crm.change("deal", "d-1", 2, stage="closedwon", closed_at=at(2))
    crm.run()
    owner, tasks, status = conn.execute(
        "SELECT owner_id, tasks, status FROM stages.onboarding_progress WHERE deal_id = 'd-1'"
    ).fetchone()
    assert owner == "own-csm"
    assert status == "in_progress"
    assert [t["task"] for t in json.loads(tasks)] == [
        t.task for t in CONFIG.handoffs.onboarding.tasks
    ]

    # Seat use reaching the activation level ends onboarding, in a later run.
    subscription(crm, "s-1", "co-1", 3, deal_id="d-1")
    crm.change("subscription", "s-1", 8, seats_active=5)
    crm.run()
    status, activated_at = conn.execute(
        "SELECT status, activated_at FROM stages.onboarding_progress WHERE deal_id = 'd-1'"
    ).fetchone()
    assert (status, activated_at) == ("activated", T0 + timedelta(days=8))
    assert conn.execute("SELECT count(*) FROM stages.onboarding").fetchone()[0] == 1


def test_fresh_buying_signals_accelerate_follow_up(crm, conn):
    crm.change("contact", "c-fresh", 0)
    crm.change("contact", "c-stale", 0)
    crm.activity("c-fresh", 29, "meeting")
    crm.activity("c-stale", 5, "meeting")
    crm.change("owner", "own-ae", 30, team="east")
    crm.run()
    rows = conn.execute("SELECT contact_id, cadence, signal FROM handoffs.follow_up_cadence")
    assert rows.fetchall() == [("c-fresh", "accelerated", "meeting")]


def test_an_mql_not_touched_within_its_sla_is_escalated_to_a_manager(crm, conn):
    for contact in ("c-ignored", "c-touched"):
        crm.change("contact", contact, 0, owner_id="own-ae")
        crm.change("contact", contact, 1, lifecycle_stage="marketingqualifiedlead")
    crm.activity("c-touched", 1.5, "call")
    crm.change("owner", "own-ae", 10, team="east")
    crm.run()
    rows = dict(
        (r[0], r[1:])
        for r in conn.execute(
            "SELECT contact_id, status, escalate_to FROM handoffs.sla_escalations"
        ).fetchall()
    )
    assert rows == {"c-ignored": ("breached", "own-mgr"), "c-touched": ("met", None)}


def test_falling_usage_or_angry_tickets_put_a_customer_on_the_renewal_risk_path(crm, conn):
    for sub in ("s-falling", "s-angry", "s-fine"):
        subscription(crm, sub, f"co-{sub}", 0)
        crm.change("subscription", sub, 10, seats_active=10)
    crm.change("subscription", "s-falling", 150, seats_active=6)
    for n in range(2):
        crm.change(
            "ticket",
            f"t-{n}",
            140,
            company_id="co-s-angry",
            priority="urgent",
            status="open",
            created_at=at(140),
        )
    crm.change("owner", "own-ae", 160, team="east")
    crm.run()
    risks = dict(
        conn.execute("SELECT subscription_id, reasons FROM handoffs.renewal_risk").fetchall()
    )
    assert set(risks) == {"s-falling", "s-angry"}
    assert risks["s-falling"] == ["seat use fell 40.0% in 90 days"]
    assert risks["s-angry"] == ["2 angry tickets in 90 days"]


def lifecycle_state(conn):
    return {
        table: conn.execute(f"SELECT * FROM stages.{table} ORDER BY ALL").fetchall()
        for table in ("entity_stages", "stage_transitions", "forbidden_transitions")
    }


def test_full_rebuild_gives_the_same_lifecycle_as_incremental_runs(conn, zone):
    config = SimulationConfig(contacts=1_500, seed=11, batch_size=2_000, duplicate_share=0.02)
    simulate_history(zone, config)
    for _ in zone.pending():  # one batch per run, out of order inside as the simulator sends
        ingest_pending(conn, zone, max_batches=1)
        refresh_current_state(conn)
        refresh_contact_lifecycle(conn, CONFIG)
        refresh_account_lifecycle(conn, CONFIG)
    incremental = lifecycle_state(conn)
    assert len(incremental["stage_transitions"]) > 3_000

    refresh_contact_lifecycle(conn, CONFIG, full_rebuild=True)
    refresh_account_lifecycle(conn, CONFIG, full_rebuild=True)
    assert lifecycle_state(conn) == incremental

    # Folded in shards of about 10 entities (by id hash), as ten million contacts would be.
    contacts = refresh_contact_lifecycle(conn, CONFIG, full_rebuild=True, shard_entities=10)
    accounts = refresh_account_lifecycle(conn, CONFIG, full_rebuild=True, shard_entities=10)
    assert contacts.entities > 1_000 and accounts.entities > 20
    assert lifecycle_state(conn) == incremental
    assert contacts.transitions + accounts.transitions == len(incremental["stage_transitions"])


def test_a_sharded_refresh_computes_the_points_once_not_once_a_shard(conn, zone):
    """Queried shard by shard, every shard scanned the whole change log and the activities
    again: ten shards of a million contacts cost ten scans of a ten-million-contact store. The
    points are computed in one pass and spread over the shards, with the same result."""
    simulate_history(zone, SimulationConfig(contacts=600, seed=5, batch_size=5_000))
    ingest_pending(conn, zone)
    refresh_current_state(conn)
    refresh_contact_lifecycle(conn, CONFIG)
    whole = lifecycle_state(conn)

    counting = CountingConnection(conn, "contact_changes AS (")
    sharded = refresh_contact_lifecycle(counting, CONFIG, full_rebuild=True, shard_entities=100)
    assert sharded.entities == 600
    assert counting.count == 1, "the points were queried once a shard"
    assert lifecycle_state(conn) == whole


def test_a_sharded_refresh_that_dies_part_way_is_finished_by_the_next(conn, zone, monkeypatch):
    """Each shard commits on its own; a refresh that dies in its third shard has moved no
    watermark, so the next recomputes every contact and ends where one unbroken refresh
    does, and the contact references it kept are not added twice."""
    from revorch.lifecycle import runner

    simulate_history(zone, SimulationConfig(contacts=600, seed=5, batch_size=5_000))
    ingest_pending(conn, zone)
    refresh_current_state(conn)
    fold, folded = runner.fold, []

    def dies_in_the_third_shard(points, machine):
        folded.append(machine)
        if len(folded) == 3:
            raise RuntimeError("the process died")
        return fold(points, machine)

    monkeypatch.setattr(runner, "fold", dies_in_the_third_shard)
    with pytest.raises(RuntimeError, match="died"):
        refresh_contact_lifecycle(conn, CONFIG, shard_entities=100)
    monkeypatch.setattr(runner, "fold", fold)
    kept = conn.execute("SELECT count(DISTINCT entity_id) FROM stages.entity_stages").fetchone()
    assert 0 < kept[0] < 600, "two shards committed, not all of them"
    assert not conn.execute(
        "SELECT count(*) FROM state_watermarks WHERE name = 'stages/contact_lifecycle'"
    ).fetchone()[0]

    finished = refresh_contact_lifecycle(conn, CONFIG, shard_entities=100)
    assert finished.entities == 600
    references = "SELECT * FROM stages.contact_references ORDER BY ALL"
    after = (lifecycle_state(conn), conn.execute(references).fetchall())
    refresh_contact_lifecycle(conn, CONFIG, full_rebuild=True)
    assert after == (lifecycle_state(conn), conn.execute(references).fetchall())
    assert len(after[1]) == len(set(after[1])) > 0


def test_the_whole_graph_materializes_on_a_simulated_crm(simulated_crm):
    # The shared CRM (conftest) went through every asset of the definitions.
    metadata = simulated_crm.metadata
    contacts = simulated_crm.config.contacts
    assert metadata["stages/contact_lifecycle"]["entities_recomputed"].value == contacts
    assert metadata["stages/mqls"]["dagster/row_count"].value > 0
    assert metadata["stages/customers"]["active_arr"].value > 0
    assert metadata["handoffs/sla_escalations"]["breached"].value >= 0


def test_each_contact_stage_reports_the_funnels_conversion_in_percent(simulated_crm):
    """A stage's conversion to the next is the funnel's (metrics.funnel_conversion), rounded."""
    metadata = simulated_crm.metadata
    funnel = metadata["metrics/funnel_conversion"]
    steps = {"leads": "lead_to_mql", "mqls": "mql_to_sql", "sqls": "sql_to_opportunity"}
    steps["opportunities"] = "opportunity_to_customer"
    for stage, step in steps.items():
        reported = metadata[f"stages/{stage}"]
        conversion = reported["conversion_to_next_pct"].value
        assert conversion == funnel[f"{step}_conversion_pct"].value, stage
        assert 0 < conversion < 100 and conversion == round(conversion, 1), stage
        assert reported["next_stage"].value == step.split("_to_")[1]
        # One build, so every record in a stage entered it in this run.
        assert reported["count"].value == reported["entered_this_run"].value > 0
        assert reported["left_this_run"].value == 0
        assert reported["median_days_in_stage"].value >= 0


def test_a_deleted_contact_leaves_the_stage_views(crm, conn):
    crm.change("contact", "c-1", 0, lifecycle_stage="marketingqualifiedlead", owner_id="own-ae")
    crm.change("contact", "c-2", 0, lifecycle_stage="marketingqualifiedlead", owner_id="own-ae")
    crm.change("contact", "c-3", 0, owner_id="own-ae")
    crm.run()
    assert conn.execute("SELECT count(*) FROM stages.mqls").fetchone()[0] == 2
    for contact in ("c-2", "c-3"):
        crm.events.append({**event(f"del-{contact}", "contact", contact, at(1)), "op": "delete"})
    crm.run()
    assert conn.execute("SELECT contact_id FROM stages.mqls").fetchall() == [("c-1",)]
    assert conn.execute("SELECT count(*) FROM stages.leads").fetchone()[0] == 0
