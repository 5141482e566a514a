"""The funnel report: the summary a RevOps lead reads on Monday, kept as a file per run."""

from datetime import UTC, datetime

import dagster as dg

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from orch_assets.stages.assets import ACCOUNT_LIFECYCLE
from resources import StateStore
from revorch import settings
from revorch.reports.funnel import funnel_summary

FUNNEL_REPORT = dg.AssetKey(["reports", "funnel_report"])
FUNNEL_CONVERSION = dg.AssetKey(["metrics", "funnel_conversion"])


@dg.asset(
    key=FUNNEL_REPORT,
    # The funnel is metrics.funnel_conversion's, so the report waits for that metric.
    deps=[FUNNEL_CONVERSION, ACCOUNT_LIFECYCLE, dg.AssetKey(["crm", "deals"])],
    group_name="reports",
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
)
def funnel_report(context: dg.AssetExecutionContext, state_store: StateStore):
    """The funnel summary, written to $REVORCH_HOME/reports/funnel-<date>.md and shown here."""
    with state_store.get_connection() as conn:
        text = funnel_summary(conn)
    folder = settings.revorch_home() / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"funnel-{datetime.now(UTC):%Y-%m-%d}.md"
    path.write_text(f"# Funnel report, {datetime.now(UTC):%Y-%m-%d}\n\n```\n{text}\n```\n")
    context.log.info(f"wrote {path}")
    return dg.MaterializeResult(
        metadata={"path": str(path), "report": dg.MetadataValue.md(f"```\n{text}\n```")}
    )
