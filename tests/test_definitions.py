"""The definitions load, and the asset graph is the one we expect."""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from orch_assets.agents.assets import OFFLINE_MODELS, UPSTREAM
from revorch.definitions import defs

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ASSETS = {
    "crm/change_log",
    "crm/quarantine",
    "crm/owners",
    "crm/companies",
    "crm/contacts",
    "crm/deals",
    "crm/activities",
    "crm/tickets",
    "crm/subscriptions",
    "stages/contact_lifecycle",
    "stages/account_lifecycle",
    "stages/leads",
    "stages/mqls",
    "stages/sqls",
    "stages/opportunities",
    "stages/customers",
    "stages/onboarding",
    "stages/adoption_health",
    "stages/renewals",
    "stages/expansion",
    "stages/waiting_references",
    "handoffs/follow_up_cadence",
    "handoffs/sla_escalations",
    "handoffs/renewal_risk",
    "metrics/funnel_conversion",
    "metrics/stage_velocity",
    "metrics/win_rate",
    "metrics/pipeline",
    "metrics/sla_compliance",
    "metrics/revenue_retention",
    "metrics/playbook_uplift",
    "metrics/automation_estate",
    "metrics/funnel_by_month",
    "metrics/agent_cost",
    "metrics/approvals",
    "reports/funnel_report",
    "reports/weekly_report",
    "agents/offline_models",
    "agents/model_backtest",
    "agents/lead_qualification",
    "agents/deal_risk",
    "agents/ticket_triage",
    "agents/renewal_risk",
    "agents/onboarding_plan",
    "governance/proposed_actions",
    "governance/policy_verdicts",
    "governance/approval_queue",
    "governance/dispatched_actions",
    "governance/audit_trail",
    "governance/run_summary",
    "analytics/published_state",
}
SCHEDULES = {
    "renewal_risk_scan_schedule",
    "sla_check_schedule",
    "weekly_funnel_report_schedule",
    "approval_sla_check_schedule",
    "full_checks_schedule",
}


def test_definitions_load_with_the_expected_assets_and_jobs():
    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert keys == EXPECTED_ASSETS
    assert {job.name for job in repo.get_all_jobs()} >= {"revorch_main", "simulate_crm"}


# Steps that wait on the network (agents on a model, the dispatcher on a target) hold the state
# store only in short phases (the writer lock queues them); they stay out of the pool, which is
# for steps that hold it throughout, so ingestion never waits on the network.
NETWORK_ASSETS = {f"agents/{name}" for name in UPSTREAM} | {"governance/dispatched_actions"}


def test_every_writing_asset_is_in_the_duckdb_writer_pool():
    repo = defs.get_repository_def()
    for assets_def in repo.asset_graph.assets_defs:
        keys = {key.to_user_string() for key in assets_def.keys}
        expected = None if keys and keys <= NETWORK_ASSETS else "duckdb_writer"
        assert assets_def.op.pool == expected, keys


def test_sensors_automation_and_schedules_start_running():
    repo = defs.get_repository_def()
    sensors = {s.name: s.default_status for s in repo.sensor_defs}
    assert sensors == {
        "landing_zone_sensor": dg.DefaultSensorStatus.RUNNING,
        "approved_actions_sensor": dg.DefaultSensorStatus.RUNNING,
        "revorch_automation": dg.DefaultSensorStatus.RUNNING,
        "decide_automation": dg.DefaultSensorStatus.STOPPED,
        "abandoned_runs_sensor": dg.DefaultSensorStatus.RUNNING,
    }
    schedules = {s.name: s for s in repo.schedule_defs}
    # A CRM poll needs its token: it starts stopped without one (docs/sources/hubspot.md).
    hubspot = schedules.pop("hubspot_poll_schedule")
    if not os.environ.get("HUBSPOT_ACCESS_TOKEN"):
        assert hubspot.default_status == dg.DefaultScheduleStatus.STOPPED
    assert set(schedules) == SCHEDULES
    assert all(s.default_status == dg.DefaultScheduleStatus.RUNNING for s in schedules.values())
    assert schedules["sla_check_schedule"].cron_schedule == "0 * * * *"
    assert schedules["renewal_risk_scan_schedule"].cron_schedule == "0 6 * * *"


def test_the_offline_models_retrain_daily_on_new_history_only():
    [models] = [a for a in defs.assets if OFFLINE_MODELS in a.keys]
    condition = models.automation_conditions_by_key[OFFLINE_MODELS]
    assert condition.get_label() == "on_cron(0 5 * * *, UTC)"


def test_every_asset_but_the_edges_follows_its_upstream_by_itself():
    repo = defs.get_repository_def()
    for assets_def in repo.asset_graph.assets_defs:
        for key, condition in assets_def.automation_conditions_by_key.items():
            if key.to_user_string().startswith(("stages/", "handoffs/", "metrics/", "analytics/")):
                assert condition is not None, key


# The landing sensor's behaviour is tested in tests/test_live_lanes.py.


def test_loading_the_definitions_imports_no_heavy_package():
    """Every run's process loads the definitions first: Great Expectations, scikit-learn (with
    SciPy), openai and statsmodels cost seconds of CPU to import, so they load only when a
    check, a model fit, the LLM tier or the uplift read-out runs (Presidio's test is in
    tests/test_redaction.py)."""
    script = (
        "import sys, revorch.definitions; "
        "print(' '.join(m for m in ('great_expectations', 'sklearn', 'scipy', 'openai', "
        "'statsmodels') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


LIFECYCLE_CHAIN = [
    "contact_lifecycle",
    "leads",
    "mqls",
    "sqls",
    "opportunities",
    "customers",
    "onboarding",
    "adoption_health",
    "renewals",
    "expansion",
]


def test_the_stage_assets_read_like_the_lifecycle():
    """Each stage depends on the stage before it (not a sibling fed by the state machine), and
    the lifecycle is one asset group."""
    graph = defs.get_repository_def().asset_graph
    chain = [dg.AssetKey(["stages", name]) for name in LIFECYCLE_CHAIN]
    for previous, stage in itertools.pairwise(chain):
        stages_upstream = {
            key for key in graph.get(stage).parent_keys if key.path[0] == "stages"
        } - {dg.AssetKey(["stages", "account_lifecycle"])}
        assert stages_upstream == {previous}, stage
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert {graph.get(key).group_name for key in chain} == {"stages"}
    assert "lifecycle" not in groups


def test_through_handoffs_selects_every_crm_stage_and_handoff_asset():
    """What tests and benchmarks build before the agents: a group renamed or left out would
    silently drop assets from it (the state machines, once in a group of their own)."""
    from revorch.definitions import THROUGH_HANDOFFS

    selected = THROUGH_HANDOFFS.resolve(defs.get_repository_def().asset_graph)
    expected = {
        key for key in EXPECTED_ASSETS if key.split("/")[0] in {"crm", "stages", "handoffs"}
    }
    assert {key.to_user_string() for key in selected} == expected
