"""Every Dagster definition of Revorch, assembled in one place."""

from pathlib import Path

import dagster as dg

from orch_assets.agents.assets import UPSTREAM as AGENT_NAMES
from orch_assets.agents.assets import agent_assets, offline_models
from orch_assets.agents.backtest import model_backtest
from orch_assets.estate.assets import automation_estate
from orch_assets.governance.assets import governance_assets
from orch_assets.governance.checks import governance_checks
from orch_assets.handoffs.assets import handoff_assets
from orch_assets.ingestion.assets import crm_change_log, crm_current_state
from orch_assets.ingestion.jobs import DECIDE_SELECTION, LANE_TAG, live_jobs, revorch_main
from orch_assets.metrics.assets import metric_assets
from orch_assets.metrics.uplift import playbook_uplift
from orch_assets.publish.assets import published_state_asset
from orch_assets.reports.assets import report_assets
from orch_assets.schedules import jobs as scheduled_jobs
from orch_assets.schedules import schedules
from orch_assets.sources.hubspot import hubspot_poll_schedule, poll_hubspot
from orch_assets.sources.salesforce import salesforce_sync
from orch_assets.sources.simulator import simulate_crm
from orch_assets.stages.assets import stage_assets
from orch_assets.stages.checks import stage_checks
from resources import LandingZoneResource, StateStore, default_resources
from sensors.approvals import approved_actions_sensor
from sensors.landing_zone import landing_zone_sensor
from sensors.recovery import abandoned_runs_sensor

# Data flows one way: landing zone -> change log -> CRM state -> stages -> handoffs, metrics
# and reports -> agents -> proposed actions -> policy -> approvals -> dispatcher -> audit
# trail -> the analysts' published copy.
pipeline_assets = [
    crm_change_log,
    crm_current_state,
    *stage_assets,
    *handoff_assets,
    *metric_assets,
    automation_estate,
    *report_assets,
    offline_models,
    model_backtest,
    *agent_assets,
    *governance_assets,
    playbook_uplift,  # the holdouts' read-out, after the dispatcher has assigned them
]
published_state = published_state_asset(
    deps=[key for assets_def in pipeline_assets for key in assets_def.keys]
)

# Declarative automation: when an upstream asset is updated outside revorch_main (by hand in
# the UI, or by a scheduled scan), the assets after it follow. RUNNING from the first start.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "revorch_automation",
    # Not what live_decide runs after every ingestion: with live_ingest updating the stages
    # outside it, eager conditions would start a run of those assets at every tick, beside
    # the decide lane and queued behind it (seen: three queued at once).
    target=dg.AssetSelection.all() - DECIDE_SELECTION,
    default_status=dg.DefaultSensorStatus.RUNNING,
    run_tags={LANE_TAG: "decide"},  # one run at a time with the decide lane
)
# What live_decide covers keeps its eager conditions for a deployment without the live lanes;
# named here (and stopped) so Dagster does not add an unnamed default sensor for them.
decide_automation_sensor = dg.AutomationConditionSensorDefinition(
    "decide_automation",
    target=DECIDE_SELECTION,
    default_status=dg.DefaultSensorStatus.STOPPED,
    run_tags={LANE_TAG: "decide"},
    description="Stopped: live_decide runs these after every ingestion. Start it only when "
    "the landing sensor is stopped and these should follow the stages on their own.",
)

defs = dg.Definitions(
    assets=[*pipeline_assets, published_state],
    asset_checks=[*stage_checks, *governance_checks],
    jobs=[revorch_main, *live_jobs, simulate_crm, poll_hubspot, salesforce_sync, *scheduled_jobs],
    schedules=[*schedules, hubspot_poll_schedule],
    sensors=[
        landing_zone_sensor,
        approved_actions_sensor,
        automation_sensor,
        decide_automation_sensor,
        abandoned_runs_sensor,
    ],
    resources=default_resources(),
    # Runs the UI or the automation sensor starts run in one process too, like revorch_main:
    # a process per step costs seconds of start-up each on a small machine.
    executor=dg.in_process_executor,
)

# The steps that take a rebuild from the whole change log (RebuildConfig), by op name.
FULL_REBUILD_STEPS = (
    "crm_current_state",
    "state_machines",  # orch_assets/stages/assets.py: contact and account lifecycles
    "stage_chain",  # the chain's keyed tables (onboarding, adoption) and waiting references
    *(f"agents__{name}" for name in AGENT_NAMES),
    "governance__proposed_actions",
    "metrics__playbook_uplift",  # otherwise recomputed once a clock day (metrics/uplift.py)
    # the metric tables kept by key (orch_assets/metrics/assets.py)
    "metrics__funnel_conversion",
    "metrics__stage_velocity",
    "metrics__sla_compliance",
    "metrics__revenue_retention",
)

# Landing zone -> change log -> CRM state -> lifecycle -> stage views -> handoffs, without the
# data-quality checks: what a test or a benchmark builds before it looks at stages, agents or
# governance.
THROUGH_HANDOFFS = dg.AssetSelection.groups(
    "ingestion", "crm_state", "stages", "handoffs"
).without_checks()


def full_rebuild_config() -> dict:
    """Run config that makes every incremental step rebuild from the whole change log."""
    return {"ops": {step: {"config": {"full_rebuild": True}} for step in FULL_REBUILD_STEPS}}


def materialize(
    selection: dg.AssetSelection,
    *,
    database: str | Path | None = None,
    landing: str | Path | None = None,
    clock: str = "wall",
    resources: dict[str, object] | None = None,
    instance: dg.DagsterInstance | None = None,
    full_rebuild: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize ``selection`` of these assets (and the checks it selects) in this process,
    as a run would: how tests and benchmarks build their state, so the graph's order is
    written once. ``database``, ``landing`` and ``clock`` point the state store and the
    landing zone elsewhere; ``resources`` replace others by key. An ephemeral instance unless
    one is given. Raises when a step fails."""
    chosen = {**defs.resources}
    if database is not None:
        # On REVORCH_STATE_BACKEND=ducklake the environment's lake, whatever ``database`` is.
        chosen["state_store"] = StateStore.configured(database, clock=clock)
    if landing is not None:
        chosen["landing_zone"] = LandingZoneResource(path=str(landing))
    # The console gets warnings only, as from the CLI; every event is still in the result.
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if full_rebuild:
        # Only the selected steps take config: Dagster refuses config for steps not in the run.
        steps = {"__".join(key.path) for key in selection.resolve(defs.resolve_asset_graph())}
        ops = full_rebuild_config()["ops"]
        run_config |= {"ops": {step: ops[step] for step in ops if step in steps}}
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        resources={**chosen, **(resources or {})},
        instance=instance,
        run_config=run_config,
    )
