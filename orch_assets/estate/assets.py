"""The automation-estate audit as an asset (docs/estate.md).

The inventory (``estate.automations``) is imported by ``revorch estate import``; this asset
(re)creates the audit's views from ``automation_estate.sql`` beside it and reports the
ranking as run metadata. The views read the change log and the lifecycle when queried, so
an import after the last run shows in ``metrics.automation_estate`` at once.
"""

from pathlib import Path

import dagster as dg

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from orch_assets.sql_files import run_sql_file
from resources import StateStore
from revorch.estate.report import AuditSettings, estate_counts, estate_report

SQL = Path(__file__).parent / "automation_estate.sql"
AUTOMATION_ESTATE = dg.AssetKey(["metrics", "automation_estate"])


@dg.asset(
    key=AUTOMATION_ESTATE,
    deps=[dg.AssetKey(["stages", "contact_lifecycle"]), dg.AssetKey(["crm", "change_log"])],
    group_name="estate",
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    automation_condition=dg.AutomationCondition.eager(),
)
def automation_estate(state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.automation_estate: every imported automation (HubSpot workflows,
    Salesforce flows, Zapier/Make scenarios) with its activity (changes, records touched), its
    outcome (progress of the contacts it touched against comparable ones, with an interval),
    its conflicts with other automations, and a recommendation: keep, migrate into Revorch or
    retire, ranked."""
    with state_store.get_connection() as conn:
        run_sql_file(conn, SQL, AuditSettings().parameters())
        counts = estate_counts(conn)
        text = estate_report(conn)
    return dg.MaterializeResult(
        metadata={**counts, "ranking": dg.MetadataValue.md(f"```\n{text}\n```")}
    )
