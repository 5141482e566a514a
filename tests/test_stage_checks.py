"""The data-quality checks of the stage assets, run by Dagster on a simulated CRM.

A healthy CRM passes every check. Each kind of corruption, written straight into DuckDB, fails
the check that guards against it and shows the failing rows; a failing blocking check stops
the stage assets after it, a failing warning does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import dagster as dg
import duckdb
import pytest

from orch_assets.handoffs.assets import handoff_assets
from orch_assets.ingestion.assets import crm_change_log, crm_current_state
from orch_assets.stages.assets import ACCOUNT_LIFECYCLE, CONTACT_LIFECYCLE, stage_assets
from orch_assets.stages.checks import ERROR, WARN, stage_checks
from resources import LandingZoneResource, LifecycleConfigResource, StateStore
from revorch.landing import LandingZone
from revorch.lifecycle.config import DEFAULT_PATH
from revorch.simulator import SimulationConfig, simulate_history

# Small, but every stage and handoff table has rows (checked below).
CRM = SimulationConfig(contacts=600, seed=5)
ASSETS = [crm_change_log, crm_current_state, *stage_assets, *handoff_assets, *stage_checks]
LEADS = dg.AssetKey(["stages", "leads"])
MQLS = dg.AssetKey(["stages", "mqls"])
ADOPTION_HEALTH = dg.AssetKey(["stages", "adoption_health"])
RENEWALS = dg.AssetKey(["stages", "renewals"])
SLICED = {CONTACT_LIFECYCLE, ACCOUNT_LIFECYCLE}  # their checks look at the changed slice


def resources(database, zone) -> dict[str, object]:
    return {
        "state_store": StateStore(database=str(database)),
        "landing_zone": LandingZoneResource(path=str(zone.root)),
        "lifecycle": LifecycleConfigResource(path=str(DEFAULT_PATH)),
    }


def materialize(database, zone, selection=None, full_check=()) -> dg.ExecuteInProcessResult:
    """Materialize ``selection``; the check steps named in ``full_check`` check every row."""
    ops = {step: {"config": {"full_check": True}} for step in full_check}
    with dg.instance_for_test() as instance:
        return dg.materialize(
            ASSETS,
            selection=selection,
            resources=resources(database, zone),
            instance=instance,
            raise_on_error=False,
            run_config={"ops": ops} if ops else None,
        )


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result) -> set[dg.AssetKey]:
    return {e.asset_key for e in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """A simulated CRM taken through ingestion, every stage and handoff, and their checks."""
    root = tmp_path_factory.mktemp("healthy")
    zone = LandingZone(root / "landing").ensure()
    simulate_history(zone, CRM)
    database = root / "revorch.duckdb"
    return database, zone, materialize(database, zone)


@pytest.fixture
def store(healthy, tmp_path):
    """A copy of the healthy state store, to corrupt."""
    database, zone, _ = healthy
    copy = tmp_path / "revorch.duckdb"
    shutil.copyfile(database, copy)
    return copy, zone


def test_every_check_passes_on_a_healthy_crm(healthy):
    _, _, result = healthy
    assert result.success
    checks = evaluations(result)
    assert set(checks) == {key.name for c in stage_checks for key in c.check_keys}
    assert len(checks) == 24 and len(stage_checks) == 15  # one step per checked asset
    assert [name for name, e in checks.items() if not e.passed] == []
    assert checks["references_are_known"].metadata["rows_checked"].value == 0  # none waits
    for name, evaluation in checks.items():  # the others did not pass for want of rows
        if name != "references_are_known":
            assert evaluation.metadata["rows_checked"].value >= 1, name
        assert evaluation.metadata["failed_expectations"].value == 0, name


@dataclass(frozen=True)
class Corruption:
    asset: dg.AssetKey
    victim_sql: str  # picks the row to corrupt: its id goes into corrupt_sql as $victim
    corrupt_sql: str
    check: str  # the check that must fail
    expectation: str  # and the expectation in it
    failing: int  # rows failing it
    shows: list[str]  # what the failing rows in the metadata show ({victim} is filled in)
    severity: dg.AssetCheckSeverity = ERROR
    also_failing: set[str] = field(default_factory=set)  # other checks it rightly trips


FIRST_CONTACT = "SELECT min(entity_id) FROM stages.entity_stages WHERE entity_type = 'contact'"
FIRST_SUBSCRIPTION = "SELECT min(subscription_id) FROM stages.adoption_health"

CORRUPTIONS = {
    "duplicate key": Corruption(
        CONTACT_LIFECYCLE,
        FIRST_CONTACT,
        "INSERT INTO stages.entity_stages SELECT * FROM stages.entity_stages "
        "WHERE entity_type = 'contact' AND entity_id = $victim",
        "contact_stages_are_valid",
        "entity_id is unique",
        2,
        ["entity_id={victim}"],
    ),
    "null key": Corruption(
        ADOPTION_HEALTH,
        "SELECT company_id FROM stages.adoption_health ORDER BY subscription_id LIMIT 1",
        "UPDATE stages.adoption_health SET subscription_id = NULL "
        "WHERE subscription_id = (SELECT min(subscription_id) FROM stages.adoption_health) "
        "AND company_id = $victim",
        "adoption_health_is_one_row_per_subscription",
        "subscription_id is set",
        1,
        ["company_id={victim}"],
    ),
    "score out of range": Corruption(
        ADOPTION_HEALTH,
        FIRST_SUBSCRIPTION,
        "UPDATE stages.adoption_health SET health_score = 140 WHERE subscription_id = $victim",
        "adoption_health_is_one_row_per_subscription",
        "health_score is between 0 and 100",
        1,
        ["subscription_id={victim}", "health_score=140"],
    ),
    "contact missing from contacts": Corruption(
        CONTACT_LIFECYCLE,
        FIRST_CONTACT,
        "UPDATE stages.entity_stages SET entity_id = 'c-ghost' "
        "WHERE entity_type = 'contact' AND entity_id = $victim",
        "contact_stages_are_valid",
        "entity_id exists in contacts",
        1,
        ["entity_id=c-ghost"],
    ),
    "onboarding of a deal missing from deals": Corruption(
        dg.AssetKey(["stages", "onboarding"]),
        "SELECT min(onboarding_id) FROM stages.onboarding",
        "UPDATE stages.onboarding SET deal_id = 'd-ghost' WHERE onboarding_id = $victim",
        "onboarding_is_one_per_won_deal",
        "deal_id exists in deals",
        1,
        ["onboarding_id={victim}", "deal_id=d-ghost"],
    ),
    "forbidden transition": Corruption(
        CONTACT_LIFECYCLE,
        FIRST_CONTACT,
        "INSERT INTO stages.stage_transitions SELECT entity_type, entity_id, 99, 'customer', "
        "'lead', transitioned_at, decided_by, rule, reason, event_id "
        "FROM stages.stage_transitions WHERE entity_id = $victim AND seq = 1",
        "contact_transitions_are_allowed",
        "from_stage -> to_stage is an allowed move",
        1,
        ["entity_id={victim}, seq=99", "move=customer -> lead"],
    ),
    "transition in the future": Corruption(
        CONTACT_LIFECYCLE,
        FIRST_CONTACT,
        "UPDATE stages.stage_transitions SET transitioned_at = now() + INTERVAL 30 DAY "
        "WHERE entity_id = $victim AND seq = 1",
        "contact_transitions_are_allowed",
        "transitioned_at is not in the future",
        1,
        ["entity_id={victim}, seq=1"],
        # The newest move is now after the data clock, which the freshness check reports too.
        also_failing={"contact_lifecycle_is_fresh"},
    ),
    "negative deal amount (a warning)": Corruption(
        dg.AssetKey(["stages", "opportunities"]),
        "SELECT min(deal_id) FROM stages.opportunities",
        "UPDATE deals SET amount = -500 WHERE id = $victim",
        "opportunity_amounts_are_plausible",
        "amount is at least 0",
        1,
        ["deal_id={victim}", "amount=-500"],
        severity=WARN,
    ),
}


@pytest.mark.parametrize("case", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_each_corruption_fails_the_check_that_guards_against_it(store, case):
    database, zone = store
    with duckdb.connect(str(database)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        [victim] = conn.execute(case.victim_sql).fetchone()
        assert victim is not None
        conn.execute(case.corrupt_sql, {"victim": victim})

    # The state machines' checks look at the changed slice: a row changed behind the state
    # machine's back is found by the full check (test_the_changed_slice_... below).
    full = [f"{case.asset.to_python_identifier()}_quality"] if case.asset in SLICED else []
    result = materialize(
        database, zone, dg.AssetSelection.checks_for_assets(case.asset), full_check=full
    )

    checks = evaluations(result)
    assert {name for name, e in checks.items() if not e.passed} == {
        case.check,
        *case.also_failing,
    }
    failed = checks[case.check]
    assert failed.severity == case.severity
    assert failed.metadata[f"failing/{case.expectation}"].value == case.failing
    assert failed.metadata["failed_expectations"].value >= 1
    failing_rows = failed.metadata["failing_rows"].value
    assert case.expectation in failing_rows
    for text in case.shows:
        assert text.format(victim=victim) in failing_rows
    assert case.expectation in failed.description
    # Only blocking (ERROR) checks fail the run; a warning leaves it successful.
    assert result.success == (case.severity == WARN)


def test_a_failing_blocking_check_stops_the_stages_after_it(store):
    database, zone = store
    forbidden = CORRUPTIONS["forbidden transition"]
    with duckdb.connect(str(database)) as conn:
        [victim] = conn.execute(forbidden.victim_sql).fetchone()
        conn.execute(forbidden.corrupt_sql, {"victim": victim})

    # The state machine has nothing new to recompute, so the corrupt row survives its run.
    result = materialize(
        database,
        zone,
        dg.AssetSelection.assets(CONTACT_LIFECYCLE, LEADS, MQLS),
        full_check=["stages__contact_lifecycle_quality"],
    )

    assert not result.success
    check = evaluations(result)["contact_transitions_are_allowed"]
    assert (check.passed, check.severity) == (False, ERROR)
    assert materialized(result) == {CONTACT_LIFECYCLE}  # leads and mqls were not built


def test_the_state_machine_checks_look_at_the_changed_slice_until_it_passes(store):
    database, zone = store
    with duckdb.connect(str(database)) as conn:
        [victim] = conn.execute(FIRST_CONTACT).fetchone()
        moves = conn.execute(
            "SELECT count(*) FROM stages.stage_transitions WHERE entity_id = ?", [victim]
        ).fetchone()[0]
    zone.write_events(
        "test",
        [
            {
                "event_id": "slice-1",
                "object_type": "contact",
                "object_id": victim,
                "occurred_at": "2026-01-01T00:00:00Z",
                "properties": {"job_title": "CFO"},
            }
        ],
    )
    checks = dg.AssetSelection.checks_for_assets(CONTACT_LIFECYCLE)
    machine = dg.AssetSelection.assets(crm_change_log, crm_current_state, CONTACT_LIFECYCLE)
    ran = materialize(database, zone, machine.without_checks() | checks)
    transitions = evaluations(ran)["contact_transitions_are_allowed"]
    assert transitions.passed
    assert transitions.metadata["checked"].value == "changed slice"
    assert transitions.metadata["rows_checked"].value == moves  # the one contact recomputed

    # A forbidden move of a contact the state machine recomputes after the last check passed
    # fails the check of the slice, and again on the next run: the watermark stays.
    zone.write_events(
        "test",
        [
            {
                "event_id": "slice-2",
                "object_type": "contact",
                "object_id": victim,
                "occurred_at": "2026-01-02T00:00:00Z",
                "properties": {"job_title": "CEO"},
            }
        ],
    )
    materialize(database, zone, machine.without_checks())
    with duckdb.connect(str(database)) as conn:
        conn.execute(CORRUPTIONS["forbidden transition"].corrupt_sql, {"victim": victim})
    for _ in range(2):
        check = evaluations(materialize(database, zone, checks))["contact_transitions_are_allowed"]
        assert (check.passed, check.metadata["checked"].value) == (False, "changed slice")
        assert check.metadata["rows_checked"].value == moves + 1
    full = materialize(database, zone, checks, full_check=["stages__contact_lifecycle_quality"])
    check = evaluations(full)["contact_transitions_are_allowed"]
    assert (check.passed, check.metadata["checked"].value) == (False, "all rows")


def test_a_failing_warning_does_not_stop_the_stages_after_it(store):
    database, zone = store
    with duckdb.connect(str(database)) as conn:
        [victim] = conn.execute(FIRST_SUBSCRIPTION).fetchone()
        conn.execute("UPDATE subscriptions SET seats_active = 2 * seats WHERE id = ?", [victim])
        # Written straight into the current state, not through the change log: no key is
        # touched, so let adoption health recompute every key, as on its first run.
        conn.execute("DELETE FROM state_watermarks WHERE name = 'stages.adoption_health'")

    result = materialize(database, zone, dg.AssetSelection.assets(ADOPTION_HEALTH, RENEWALS))

    assert result.success
    checks = evaluations(result)
    warning = checks["seat_use_is_plausible"]
    assert (warning.passed, warning.severity) == (False, WARN)
    assert warning.metadata["failing/utilization is between 0 and 1"].value == 1
    assert f"subscription_id={victim}" in warning.metadata["failing_rows"].value
    assert checks["adoption_health_is_one_row_per_subscription"].passed
    assert materialized(result) == {ADOPTION_HEALTH, RENEWALS}


def test_the_main_job_runs_every_stage_check():
    from revorch.definitions import defs

    job_ops = set(defs.resolve_job_def("revorch_main").graph.node_names())
    assert {check.op.name for check in stage_checks} <= job_ops
    blocking = {
        spec.key.name for check in stage_checks for spec in check.check_specs if spec.blocking
    }
    assert {
        "contact_stages_are_valid",
        "contact_transitions_are_allowed",
        "account_stages_are_valid",
        "account_transitions_are_allowed",
    } <= blocking
    assert "contact_lifecycle_is_fresh" not in blocking
    assert ACCOUNT_LIFECYCLE in {
        key.asset_key for check in stage_checks for key in check.check_keys
    }


NIGHTLY_RUN = """
import json
import dagster as dg
from revorch.definitions import defs

with dg.instance_for_test() as instance:
    result = defs.resolve_job_def("full_checks").execute_in_process(
        instance=instance, raise_on_error=False
    )
print(json.dumps({
    "checks": {e.check_name: [e.passed, {k: v.value for k, v in e.metadata.items()}]
               for e in result.get_asset_check_evaluations()},
    "every_check": sorted(k.name for k in defs.resolve_asset_graph().asset_check_keys),
    "materialized": len(result.get_asset_materialization_events()),
}))
"""


def test_the_nightly_full_check_runs_every_check_over_every_row(copy_crm):
    """The `full_checks` job (its schedule runs nightly), run as the daemon would on a home,
    finds a row written behind the pipeline's back, which a run's checks of the changed slice
    never look at; every check runs, nothing is rebuilt."""
    from revorch import settings

    home = copy_crm("governed")
    forbidden = CORRUPTIONS["forbidden transition"]
    with home.connect() as conn:
        [victim] = conn.execute(forbidden.victim_sql).fetchone()
        conn.execute(forbidden.corrupt_sql, {"victim": victim})

    # Everything under the home, on the suite's backend: on DuckLake (``state_backend``) the
    # home's state, and the corruption, are in this test's lake.
    kept = {"REVORCH_STATE_BACKEND"}
    env = {
        k: v for k, v in os.environ.items() if k not in settings.ELSEWHERE or k in kept
    } | home.env()
    ran = subprocess.run(
        [sys.executable, "-c", NIGHTLY_RUN], env=env, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])

    assert set(found["every_check"]) - set(found["checks"]) == set()
    passed, metadata = found["checks"][forbidden.check]
    assert (passed, metadata["checked"]) == (False, "all rows")
    assert metadata[f"failing/{forbidden.expectation}"] == forbidden.failing
    assert found["checks"]["nothing_sent_without_a_verdict"][0]
    assert found["materialized"] == 0
