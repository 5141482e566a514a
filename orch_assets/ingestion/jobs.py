"""The jobs that take landed batches: ``revorch_main`` and the two live lanes that split it.

``revorch_main`` ingests every waiting batch and brings every asset up to date in one run
(``revorch ingest``). A full run takes many times longer than the interval between live
batches, so under a stream it is split in two lanes that each keep at most one run in flight
(sensors/landing_zone.py, and a run-tag limit in revorch/instance/dagster.yaml):

- ``live_ingest``: waiting batches -> change log -> CRM state -> stages -> analysts' copy.
  Short, so a change reaches the stages seconds after it lands.
- ``live_decide``: the rest of ``revorch_main`` (handoffs, metrics, agents, governance, the
  data-quality checks) over whatever the stages hold when it starts; it may wait on a model.

The lanes together are exactly ``revorch_main``: what it leaves to a schedule (the daily model
fit and backtest, the weekly report) stays out of both (tests/test_live_lanes.py).

Reviews and dispatch run in jobs of their own (orch_assets/schedules.py) at a higher
priority, which Dagster applies both to the run queue and to the ``duckdb_writer`` pool: they
take the writer at the next step boundary instead of waiting for the lanes' runs to end.
"""

import dagster as dg

from orch_assets.agents.assets import OFFLINE_MODELS
from orch_assets.agents.backtest import MODEL_BACKTEST
from orch_assets.reports.assets import WEEKLY_REPORT
from revorch.instance.writer import writer_held_executor

LANE_TAG = "revorch/lane"
PRIORITY_TAG = "dagster/priority"
# Higher runs first, in the run queue and for a duckdb_writer slot (Dagster adds the run's
# priority to each step's claim). Reviews and dispatch beat both lanes; ingestion beats decide.
GOVERNANCE_PRIORITY = "10"
INGEST_PRIORITY = "5"

INGEST_GROUPS = ("ingestion", "crm_state", "stages")
PUBLISHED = dg.AssetKey(["analytics", "published_state"])

revorch_main = dg.define_asset_job(
    "revorch_main",
    # Models are retrained and backtested daily (on_cron) and the weekly report is made on
    # Mondays (orch_assets/schedules.py), not on every batch.
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets(OFFLINE_MODELS, MODEL_BACKTEST, WEEKLY_REPORT),
    description="Ingest every waiting batch and bring every asset up to date.",
    # One process for the whole run: steps share the DuckDB writer pool one at a time anyway,
    # and a process per step would add seconds to every run.
    executor_def=dg.in_process_executor,
)

live_ingest = dg.define_asset_job(
    "live_ingest",
    selection=dg.AssetSelection.groups(*INGEST_GROUPS).without_checks(),
    description="Ingest every waiting batch and refresh the CRM state and the stages for the "
    "records they touch: the live lane the landing sensor keeps one run of.",
    tags={LANE_TAG: "ingest", PRIORITY_TAG: INGEST_PRIORITY},
    # The writer once for the whole run, not once a step behind live_decide's steps
    # (revorch/instance/writer.py).
    executor_def=writer_held_executor,
)

# The rest of revorch_main: everything after the stages, the stages' checks (off the ingestion
# lane's critical path) and the analysts' copy, published at the end of every decide run (the
# landing sensor starts one after every successful ingestion), so the next batch's ingestion
# does not wait for the copy.
DECIDE_SELECTION = revorch_main.selection - live_ingest.selection

live_decide = dg.define_asset_job(
    "live_decide",
    selection=DECIDE_SELECTION,
    description="Handoffs, metrics, agents and governance over the stages as they are when it "
    "starts, and the data-quality checks: the live lane after live_ingest.",
    tags={LANE_TAG: "decide"},
    executor_def=dg.in_process_executor,
)

live_jobs = [live_ingest, live_decide]
