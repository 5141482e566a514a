"""The live lanes: what `revorch ui` runs while batches keep landing.

A full ``revorch_main`` run takes many times longer than the interval between live batches,
so under a stream it is split in two lanes that each keep at most one run in flight
(sensors/landing_zone.py, and a run-tag limit in revorch/instance/dagster.yaml):

- ``live_ingest``: waiting batches -> change log -> CRM state -> stages -> analysts' copy.
  Short, so a change reaches the stages seconds after it lands.
- ``live_decide``: everything after the stages (handoffs, metrics, agents, governance, the
  data-quality checks) over whatever the stages hold when it starts; it may wait on a model.

Reviews and dispatch run in jobs of their own (orch_assets/schedules.py) at a higher
priority, which Dagster applies both to the run queue and to the ``duckdb_writer`` pool: they
take the writer at the next step boundary instead of waiting for the lanes' runs to end.
"""

import dagster as dg

LANE_TAG = "revorch/lane"
PRIORITY_TAG = "dagster/priority"
# Higher runs first, in the run queue and for a duckdb_writer slot (Dagster adds the run's
# priority to each step's claim). Reviews and dispatch beat both lanes; ingestion beats decide.
GOVERNANCE_PRIORITY = "10"
INGEST_PRIORITY = "5"

INGEST_GROUPS = ("ingestion", "crm_state", "stages")
PUBLISHED = dg.AssetKey(["analytics", "published_state"])
OFFLINE_MODELS = dg.AssetKey(["agents", "offline_models"])

live_ingest = dg.define_asset_job(
    "live_ingest",
    selection=dg.AssetSelection.groups(*INGEST_GROUPS).without_checks()
    | dg.AssetSelection.assets(PUBLISHED),
    description="Ingest every waiting batch and refresh the CRM state and the stages for the "
    "records they touch, then publish: the live lane the landing sensor keeps one run of.",
    tags={LANE_TAG: "ingest", PRIORITY_TAG: INGEST_PRIORITY},
    executor_def=dg.in_process_executor,
)

# Everything after the stages, the stages' checks (off the ingestion lane's critical path)
# and the analysts' copy.
DECIDE_SELECTION = (
    (
        dg.AssetSelection.all()
        - dg.AssetSelection.groups(*INGEST_GROUPS)
        - dg.AssetSelection.assets(OFFLINE_MODELS)
    )
    | (
        dg.AssetSelection.groups(*INGEST_GROUPS)
        - dg.AssetSelection.groups(*INGEST_GROUPS).without_checks()
    )
    | dg.AssetSelection.assets(PUBLISHED)
)

live_decide = dg.define_asset_job(
    "live_decide",
    selection=DECIDE_SELECTION,
    description="Handoffs, metrics, agents and governance over the stages as they are when it "
    "starts, and the data-quality checks: the live lane after live_ingest.",
    tags={LANE_TAG: "decide"},
    executor_def=dg.in_process_executor,
)

live_jobs = [live_ingest, live_decide]
