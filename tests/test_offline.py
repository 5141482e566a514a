"""The offline tier on real DuckDB state: the lead model learns without peeking at the
future, is repeatable and survives JSON; rules triage tickets, score renewals and write
onboarding plans; every output fits its schema."""

import json
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from conftest import (
    SCORING_CRM,
    STATE_STORE_CONNECTION,
    STEPS,
    build_crm,
    event,
    ingest_and_stage,
)
from revorch import clock
from revorch.agents.offline import (
    LeadModel,
    OfflineTier,
    deal_inputs,
    lead_inputs,
    onboarding_inputs,
    renewal_inputs,
    ticket_inputs,
)
from revorch.agents.offline.lead_model import lead_examples
from revorch.agents.schemas import (
    DealRisk,
    LeadQualification,
    OnboardingPlan,
    RenewalRisk,
    TicketTriage,
)
from revorch.lifecycle.config import load_lifecycle_config

CONFIG = load_lifecycle_config()
T0 = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_events(db_path, zone, events):
    """Land ``events`` and run the asset graph up to the handoffs, on the data clock."""
    zone.write_events("test", events)
    ingest_and_stage(db_path, zone, clock_setting=clock.DATA)


@pytest.fixture(scope="module")
def crm(scoring_crm, tmp_path_factory):
    """A copy of the 4,000-contact CRM (conftest), built through the asset graph."""
    conn = scoring_crm.copy("stages", tmp_path_factory.mktemp("crm") / "crm").connect()
    clock.bind(conn, clock.DATA)  # the history's own clock, as it was built on
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def tier(crm):
    return OfflineTier.train(crm)


def test_every_model_trains_on_a_simulated_crm(tier):
    assert tier.untrained == {}
    assert tier.model_version("lead_qualification").startswith("lead-logreg-")
    assert tier.model_version("deal_risk").startswith("deal-logreg-")
    assert tier.model_version("renewal_risk").startswith("renewal-logreg-")
    assert tier.model_version("ticket_triage") == "offline-rules-1"


def test_the_lead_model_is_repeatable_on_the_same_history(crm, tmp_path):
    # The same simulation built again through the graph, into a separate file.
    stages = {"stages": STEPS["stages"].without_checks()}
    again = build_crm(SCORING_CRM, tmp_path, stages, clock_setting=clock.DATA)
    # build_crm builds on the file whatever the backend (as ``crm``'s was): read that file.
    again = duckdb.connect(str(again.homes["stages"].database), config=STATE_STORE_CONNECTION)
    again.execute("SET TimeZone = 'UTC'")
    clock.bind(again, clock.DATA)
    first, second = LeadModel.train(crm), LeadModel.train(again)
    assert first.version == second.version
    inputs = lead_inputs(crm)
    assert first.predict(inputs) == second.predict(lead_inputs(again))
    other = LeadModel.train(crm, horizon_days=60)
    assert other.version != first.version


def test_the_lead_model_round_trips_through_json(crm):
    model = LeadModel.train(crm)
    copy = LeadModel.from_json(model.to_json())
    inputs = lead_inputs(crm)[:200]
    assert copy.version == model.version
    assert copy.predict(inputs) == model.predict(inputs)
    assert copy.fit_scores(inputs) == model.fit_scores(inputs)
    tampered = json.loads(model.to_json())
    tampered["intent"]["intercept"] += 1
    with pytest.raises(ValueError, match="does not match"):
        LeadModel.from_json(json.dumps(tampered))


def test_the_lead_model_separates_converters_from_the_rest(crm):
    model = LeadModel.train(crm)
    examples = lead_examples(crm)
    p = model.predict_frame(examples)
    labels = examples["label"].to_numpy()
    assert p[labels == 1].mean() > 2.5 * p[labels == 0].mean()
    # Vectorised over a frame and over a list of dicts give the same numbers.
    inputs = lead_inputs(crm)
    assert model.predict(inputs[:50]) == pytest.approx(model.predict(inputs)[:50])


def test_lead_features_use_only_what_was_known_at_the_scoring_time(conn, db_path, zone):
    events = [
        event("e1", "company", "co-1", at(0), industry="software", tier="smb", employees=50),
        event(
            "e2",
            "contact",
            "c-1",
            at(0),
            company_id="co-1",
            lead_source="referral",
            job_title="CTO",
            created_at=at(0),
        ),
        event(
            "e3",
            "activity",
            "a-1",
            at(2),
            contact_id="c-1",
            activity_type="web_visit",
            url="https://x.io/pricing",
            activity_at=at(2),
        ),
        event(
            "e4",
            "activity",
            "a-2",
            at(9),
            contact_id="c-1",
            activity_type="meeting",
            activity_at=at(9),
        ),
        event(
            "e5",
            "activity",
            "a-3",
            at(30),
            contact_id="c-1",
            activity_type="form_fill",
            activity_at=at(30),
        ),
        # The company grows after the scoring time: a contact scored earlier saw an SMB.
        event("e6", "company", "co-1", at(10), tier="enterprise", employees=5_000),
        event("e7", "contact", "c-1", at(40), lifecycle_stage="salesqualifiedlead"),
        event("e8", "owner", "own-1", at(200), role="ae"),  # the data clock: day 200
    ]
    load_events(db_path, zone, events)

    at_creation = lead_inputs(conn, ["c-1"], as_of=T0)[0]
    assert (at_creation["pricing_visits"], at_creation["meetings"], at_creation["form_fills"]) == (
        0,
        0,
        0,
    )
    day_5 = lead_inputs(conn, ["c-1"], as_of=T0 + timedelta(days=5))[0]
    assert (day_5["pricing_visits"], day_5["meetings"], day_5["tier"]) == (1, 0, "smb")

    # Training describes the contact at day 14: the form fill on day 30 and the SQL on day
    # 40 are in the future then, and the label comes from the transitions alone.
    example = lead_examples(conn).row(0, named=True)
    assert example["id"] == "c-1"
    assert (example["pricing_visits"], example["meetings"], example["form_fills"]) == (1, 1, 0)
    assert (example["tier"], example["employees"], example["stage"]) == ("enterprise", 5000, "lead")
    assert example["label"] == 1
    # Scoring at the same time gives the same features training saw.
    (scored,) = lead_inputs(conn, ["c-1"], as_of=T0 + timedelta(days=14))
    for key in ("pricing_visits", "meetings", "form_fills", "tier", "employees", "stage"):
        assert scored[key] == example[key], key
    early = lead_examples(conn, horizon_days=30).row(0, named=True)
    assert early["label"] == 0  # reached SQL on day 40: outside a 30-day horizon


def test_lead_inputs_are_stable_json_with_sorted_keys(crm):
    inputs = lead_inputs(crm)
    assert inputs == lead_inputs(crm)
    assert {row["stage"] for row in inputs} <= {"lead", "mql", "sql"}
    for row in inputs[:100]:
        assert list(row) == sorted(row)
        json.dumps(row, allow_nan=False)
        assert len(row["recent_activity"]) <= 5


def test_lead_confidence_is_distance_from_the_cut(tier, crm):
    model = tier.lead_model
    decisions = [(tier.lead_qualification(i), i) for i in lead_inputs(crm)[:400]]
    for decision, item in decisions:
        if decision.reasons == ["already sales-qualified"] or item["stale"]:
            continue  # rules, not the model: test_features.py
        p, t = decision.intent_score, model.threshold
        expected = (p - t) / (1 - t) if p >= t else (t - p) / t
        assert decision.confidence == pytest.approx(expected, abs=1e-3)
        assert (decision.next_action in ("fast_track_to_sales", "accelerate_follow_up")) == (p >= t)


@pytest.mark.parametrize("calibrated", [False, True])
def test_scoring_every_lead_at_once_decides_as_one_by_one(crm, calibrated):
    """A run scores its open leads in bulk (``lead_qualifications``): the same bits as the
    row-by-row model (a matrix product over all rows sums in another order and differs in
    the last bit), the same decisions."""
    from revorch.agents.scoring import ScoringConfig

    tier = OfflineTier.train(crm, scoring=ScoringConfig() if calibrated else None)
    assert hasattr(tier.lead_model, "calibrator") == calibrated
    items = lead_inputs(crm)
    model = tier.lead_model
    assert len(items) > 1000 and {i["stale"] for i in items} == {False, True}
    assert model.predict_each(items) == [model.predict([i])[0] for i in items]
    assert model.fit_scores_each(items) == [model.fit_scores([i])[0] for i in items]
    bulk = [d.model_dump() for d in tier.lead_qualifications(items)]
    assert bulk == [tier.lead_qualification(i).model_dump() for i in items]
    assert {d["next_action"] for d in bulk} >= {"nurture", "accelerate_follow_up"}


TICKETS = {
    "cancel": (
        "Cancel our subscription",
        "We are switching to another vendor next month. Please cancel and refund the unused seats.",
        "medium",
    ),
    "outage": (
        "Everything is down",
        "Outage since 9am: the whole team is locked out and the app times out for everyone.",
        "urgent",
    ),
    "billing": (
        "Question about our invoice",
        "Hi, could you explain the seat count on our latest invoice? Thanks.",
        "low",
    ),
    "how_to": (
        "How do I set up a forecast view?",
        "Is there a guide for building a forecast by region? Thanks in advance.",
        "low",
    ),
}


@pytest.mark.parametrize(
    ("name", "intent", "severity", "churn", "sentiment", "action"),
    [
        ("cancel", "cancellation", "high", True, "neutral", "escalate_to_csm"),
        ("outage", "outage", "critical", False, "neutral", "notify_engineering"),
        ("billing", "billing", "low", False, "positive", "billing_review"),
        ("how_to", "how_to", "low", False, "positive", "route_to_support"),
    ],
)
def test_ticket_triage_reads_the_text(name, intent, severity, churn, sentiment, action):
    subject, body, priority = TICKETS[name]
    triage = OfflineTier().ticket_triage(
        {"id": name, "subject": subject, "body": body, "priority": priority}
    )
    assert (
        triage.intent,
        triage.severity,
        triage.churn_signal,
        triage.sentiment,
        triage.next_action,
    ) == (intent, severity, churn, sentiment, action)
    assert triage.confidence >= 0.5


def test_ticket_confidence_is_low_when_the_text_says_little():
    tier = OfflineTier()
    vague = tier.ticket_triage({"id": "v", "subject": "Hello", "body": "Please call me."})
    clear = tier.ticket_triage(
        {"id": "c", "subject": TICKETS["cancel"][0], "body": TICKETS["cancel"][1]}
    )
    assert vague.intent == "other"
    assert vague.confidence < 0.3 < clear.confidence


HEALTHY = {
    "id": "s-ok",
    "utilization": 0.92,
    "usage_change": 0.05,
    "angry_tickets": 0,
    "open_tickets": 0,
    "seats": 50,
    "arr": 40_000,
    "plan": "professional",
    "health_score": 95,
}
FALLING = {
    "id": "s-bad",
    "utilization": 0.35,
    "usage_change": -0.4,
    "angry_tickets": 3,
    "open_tickets": 2,
    "seats": 50,
    "arr": 40_000,
    "plan": "professional",
    "health_score": 30,
}


def test_renewal_risk_is_higher_for_falling_use_and_angry_tickets(tier):
    for judge in (tier, OfflineTier()):  # the trained model, and the rule without one
        healthy, falling = judge.renewal_risk(HEALTHY), judge.renewal_risk(FALLING)
        assert falling.risk_score > healthy.risk_score + 0.3
        assert (healthy.risk_level, healthy.next_action) == ("low", "no_action")
        assert falling.risk_level == "high" and falling.next_action == "csm_outreach"
        assert any("seat use fell" in r for r in falling.reasons)
    assert OfflineTier().renewal_risk(FALLING).confidence <= 0.3  # a rule is never sure


def test_stale_overdue_deals_are_riskier(tier, crm):
    deal = deal_inputs(crm)[0]
    fresh = {**deal, "close_date": "2030-01-01", "last_touch_at": deal["as_of"]}
    stale = {**deal, "close_date": "2020-01-01", "last_touch_at": "2020-01-01"}
    assert tier.deal_risk(stale).risk_score > tier.deal_risk(fresh).risk_score
    assert any("past its close date" in r for r in tier.deal_risk(stale).reasons)


def test_an_onboarding_plan_holds_the_configured_tasks(conn, db_path, zone):
    events = [
        event("o1", "owner", "own-csm", at(0), role="csm"),
        event("o2", "company", "co-1", at(0), name="Acme", tier="enterprise", industry="software"),
        event(
            "o3",
            "deal",
            "d-1",
            at(0),
            company_id="co-1",
            deal_type="new_business",
            stage="contractsent",
            amount=90_000,
        ),
        event("o4", "deal", "d-1", at(2), stage="closedwon", closed_at=at(2)),
        event(
            "o5",
            "subscription",
            "s-1",
            at(3),
            company_id="co-1",
            deal_id="d-1",
            status="active",
            seats=400,
            seats_active=40,
            start_date="2025-01-04",
            end_date="2026-01-04",
            arr=90_000,
        ),
        event("o6", "owner", "own-csm", at(12), role="csm"),  # the data clock: day 12
    ]
    load_events(db_path, zone, events)
    (item,) = onboarding_inputs(conn)
    plan = OfflineTier().onboarding_plan(item)
    OnboardingPlan.model_validate(plan.model_dump())
    tasks = [s.task for s in plan.steps]
    configured = [t.task for t in CONFIG.handoffs.onboarding.tasks]
    assert tasks[: len(configured)] == configured
    assert {"phased_rollout_by_team", "seat_activation_push", "executive_sponsor_alignment"} <= set(
        tasks
    )
    kickoff = plan.steps[0]
    assert kickoff.due_in_days == max(0, 3 - item["days_since_start"])
    assert plan.next_action == "assign_csm_review"  # 10% of seats active after days


def test_every_output_validates_against_its_schema(tier, crm):
    agents = [
        ("lead_qualification", lead_inputs, LeadQualification),
        ("deal_risk", deal_inputs, DealRisk),
        ("ticket_triage", ticket_inputs, TicketTriage),
        ("renewal_risk", renewal_inputs, RenewalRisk),
    ]
    for agent, inputs, schema in agents:
        items = inputs(crm)
        assert items, agent
        for item in items[:300]:
            output = getattr(tier, agent)(item)
            assert isinstance(output, schema)
            schema.model_validate_json(output.model_dump_json())
            json.dumps(item, sort_keys=True, allow_nan=False)
