"""The models' daily backtest against plain baselines, as run metadata the UI plots."""

import dagster as dg

from orch_assets.agents.assets import HISTORY
from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from resources import LifecycleConfigResource, StateStore
from resources.agents import AgentsConfigResource
from revorch.agents.model_backtest import backtest_history
from revorch.agents.offline.history import KINDS, past_examples

MODEL_BACKTEST = dg.AssetKey(["agents", "model_backtest"])


@dg.asset(
    key=MODEL_BACKTEST,
    deps=HISTORY,
    group_name="agents",
    kinds={"duckdb", "sklearn"},
    # It holds the state store (and its writer lock) while it reads the examples.
    pool=DUCKDB_WRITER_POOL,
    # Once a day: it refits every model and two baselines each, too slow for every batch
    # (revorch_main leaves it out).
    automation_condition=dg.AutomationCondition.on_cron("0 6 * * *"),
)
def model_backtest(
    context: dg.AssetExecutionContext,
    state_store: StateStore,
    lifecycle: LifecycleConfigResource,
    agents: AgentsConfigResource,
):
    """Each offline model (lead, deal, renewal) trained on the earlier history and tested on
    the later, beside a plain logistic regression and gradient boosting on the same features
    and split: AUC, top-decile precision and lift, Brier score and mean prediction, per model
    and scorer (``<model>/<scorer>/<figure>``), and ``<model>/worse_than_baseline`` when the
    product loses to a baseline (with a warning in the log); the declared outcome's counts
    (``<model>/outcome/...``, warned under about 100 positives)."""
    config, settings = lifecycle.load(), agents.load()
    # Read the examples, then let the state store go: the fitting needs no database.
    histories, metadata = {}, {}
    with state_store.get_connection() as conn:
        for kind in KINDS:
            histories[kind] = past_examples(kind, conn, config=config, models=settings.models)
    for kind, history in histories.items():
        try:
            report = backtest_history(history, scoring=settings.scoring)
        except ValueError as error:  # too little history for this model yet
            metadata[f"{kind}/skipped"] = str(error)
            continue
        metadata |= report.as_metadata()
        for warning in report.worse_than_baseline:
            context.log.warning(warning)
        for warning in report.outcome_warnings:
            context.log.warning(f"{kind} model {warning}")
    return dg.MaterializeResult(metadata=metadata)
