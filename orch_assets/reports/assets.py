"""Reports written for people, and the views only they needed.

- ``reports/funnel_report``: the funnel summary a RevOps lead reads on Monday, kept as a file.
- ``reports/weekly_report``: the weekly report for a revenue leader (docs/report.md), one
  self-contained HTML file; run by the weekly schedule, not by every ingestion.
- ``metrics/funnel_by_month``, ``metrics/agent_cost``, ``metrics/approvals``: the views the
  weekly report reads beyond docs/metrics.md's, in the ``metrics`` schema so that analysts
  query the same numbers; their SQL is beside this module.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from orch_assets.governance.assets import APPROVAL_QUEUE, DISPATCHED_ACTIONS
from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from orch_assets.sql_files import run_sql_file
from orch_assets.stages.assets import ACCOUNT_LIFECYCLE
from resources import StateStore
from revorch import settings
from revorch.reports.funnel import funnel_summary

SQL_DIR = Path(__file__).parent
FUNNEL_REPORT = dg.AssetKey(["reports", "funnel_report"])
WEEKLY_REPORT = dg.AssetKey(["reports", "weekly_report"])
FUNNEL_CONVERSION = dg.AssetKey(["metrics", "funnel_conversion"])
CONTACT_LIFECYCLE = dg.AssetKey(["stages", "contact_lifecycle"])
FUNNEL_BY_MONTH = dg.AssetKey(["metrics", "funnel_by_month"])
AGENT_COST = dg.AssetKey(["metrics", "agent_cost"])
APPROVALS = dg.AssetKey(["metrics", "approvals"])
EAGER = dg.AutomationCondition.eager()


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


def _view_asset(key: dg.AssetKey, deps: list[dg.AssetKey]):
    return dg.asset(
        key=key,
        deps=deps,
        group_name="metrics",
        kinds={"duckdb"},
        pool=DUCKDB_WRITER_POOL,
        automation_condition=EAGER,
    )


def _numbers(row: tuple | None, names: list[str]) -> dict[str, float | int]:
    """Metadata the UI plots; undefined (NULL) values are left out, as the metrics do."""
    values = dict(zip(names, row or (), strict=False))
    return {k: v if isinstance(v, int) else float(v) for k, v in values.items() if v is not None}


@_view_asset(
    FUNNEL_BY_MONTH, [FUNNEL_CONVERSION, CONTACT_LIFECYCLE, dg.AssetKey(["crm", "contacts"])]
)
def funnel_by_month(state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.funnel_by_month: the funnel of metrics.funnel_conversion (one funnel
    definition) by the month each contact first entered it, with each stage's conversion."""
    with state_store.get_connection() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
        run_sql_file(conn, SQL_DIR / "funnel_by_month.sql", {})
        row = conn.execute(
            "SELECT count(DISTINCT month), sum(reached) FILTER (WHERE stage = 'lead') "
            "FROM metrics.funnel_by_month"
        ).fetchone()
    return dg.MaterializeResult(metadata=_numbers(row, ["cohort_months", "contacts"]))


@_view_asset(AGENT_COST, [DISPATCHED_ACTIONS])
def agent_cost(state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.agent_cost: per agent, model spend (to date, last 7 days), decisions,
    actions sent, and the cost per decision and per action sent."""
    with state_store.get_connection() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
        run_sql_file(conn, SQL_DIR / "agent_cost.sql", {})
        row = conn.execute(
            "SELECT cost_usd, cost_usd_7d, decisions, actions_sent, cost_per_action_sent "
            "FROM metrics.agent_cost WHERE agent = '(all)'"
        ).fetchone()
    names = ["cost_usd", "cost_usd_7d", "decisions", "actions_sent", "cost_per_action_sent"]
    return dg.MaterializeResult(metadata=_numbers(row, names))


@_view_asset(APPROVALS, [APPROVAL_QUEUE])
def approvals(state_store: StateStore) -> dg.MaterializeResult:
    """Views metrics.approval_waits (every action held for a person, and how long it waited)
    and metrics.approvals (per action type: approved, rejected, expired, waiting, and the
    median and p90 hours to a decision)."""
    with state_store.get_connection() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
        run_sql_file(conn, SQL_DIR / "approvals.sql", {})
        row = conn.execute(
            "SELECT asked, waiting, median_hours_to_decision, oldest_waiting_hours "
            "FROM metrics.approvals WHERE action_type = '(all)'"
        ).fetchone()
    names = [
        "approvals_asked",
        "approvals_waiting",
        "median_hours_to_decision",
        "oldest_waiting_hours",
    ]
    return dg.MaterializeResult(metadata=_numbers(row, names))


@dg.asset(
    key=WEEKLY_REPORT,
    deps=[
        FUNNEL_CONVERSION,
        FUNNEL_BY_MONTH,
        dg.AssetKey(["metrics", "stage_velocity"]),
        dg.AssetKey(["metrics", "revenue_retention"]),
        dg.AssetKey(["metrics", "playbook_uplift"]),
        AGENT_COST,
        APPROVALS,
        dg.AssetKey(["metrics", "automation_estate"]),
    ],
    group_name="reports",
    kinds={"duckdb", "html"},
    pool=DUCKDB_WRITER_POOL,
)
def weekly_report(context: dg.AssetExecutionContext, state_store: StateStore):
    """The weekly report for a revenue leader (docs/report.md): funnel and its conversion over
    time, cycle time per stage, NRR and GRR, uplift per playbook, cost per agent, approvals
    and the automation estate, as one HTML file with its plots inline:
    $REVORCH_HOME/reports/weekly-<date>.html. Every figure is read from the metrics views.
    Made every Monday by the weekly_funnel_report schedule (and `revorch report weekly`)."""
    from revorch.reports.weekly import weekly_report_html  # matplotlib: only when it runs

    with state_store.get_connection() as conn:
        html = weekly_report_html(conn, source="the state store, by the weekly report asset")
    folder = settings.revorch_home() / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"weekly-{datetime.now(UTC):%Y-%m-%d}.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader never opens half a report
    context.log.info(f"wrote {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "url": dg.MetadataValue.url(path.resolve().as_uri()),
            "bytes": len(html.encode()),
        }
    )


report_assets = [funnel_report, funnel_by_month, agent_cost, approvals, weekly_report]
