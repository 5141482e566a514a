"""Ingestion: landing-zone batches -> change log -> current-state CRM tables."""

import dagster as dg

from resources import LandingZoneResource, StateStore
from revorch import settings
from revorch.ingestion.change_log import ingest_pending
from revorch.ingestion.current_state import refresh_current_state

# Every asset that writes to DuckDB runs in this pool; the instance limits it to one at a
# time because DuckDB allows a single writing process.
DUCKDB_WRITER_POOL = "duckdb_writer"
# On DuckLake many ingestions may append at once (their commits conflict and retry, see
# revorch/state/backend.py), so the change log leaves the pool; the rebuilds stay in it.
CHANGE_LOG_POOL = DUCKDB_WRITER_POOL if settings.state_backend() == "duckdb" else None

CHANGE_LOG = dg.AssetKey(["crm", "change_log"])
QUARANTINE = dg.AssetKey(["crm", "quarantine"])

CURRENT_STATE_TABLES = {
    "owners": "Sales and success users (SDRs, AEs, CSMs, managers) who own records.",
    "companies": "Accounts: firmographics (industry, size, country) and tier.",
    "contacts": "People at companies: lead source, CRM lifecycle stage and lead status.",
    "deals": "New-business, renewal and expansion deals with their pipeline stage.",
    "activities": "Engagement: emails sent/opened/replied, meetings, calls, web visits, forms.",
    "tickets": "Support tickets with their text, priority, status and satisfaction.",
    "subscriptions": "Contracts: plan, term, ARR, seats and seat usage, renewals and churn.",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            CHANGE_LOG,
            description="Append-only log of every CRM change, loaded exactly once per event id.",
            kinds={"duckdb"},
            group_name="ingestion",
        ),
        dg.AssetSpec(
            QUARANTINE,
            description="Malformed input lines, kept whole with the reason they were refused.",
            kinds={"duckdb"},
            group_name="ingestion",
        ),
    ],
    pool=CHANGE_LOG_POOL,
)
def crm_change_log(
    context: dg.AssetExecutionContext,
    state_store: StateStore,
    landing_zone: LandingZoneResource,
):
    """Take the pending landing-zone batches into the change log, a bounded number per
    transaction."""
    with state_store.get_connection() as conn:
        result = ingest_pending(
            conn,
            landing_zone.zone(),
            run_id=context.run_id,
            max_event_bytes=landing_zone.max_event_bytes,
            max_batches=landing_zone.max_batches_per_run,
            batches_per_transaction=landing_zone.batches_per_transaction,
        )
        log_rows, quarantine_rows = conn.execute(
            "SELECT (SELECT count(*) FROM change_log), (SELECT count(*) FROM quarantine)"
        ).fetchone()
    if result.received != result.loaded + result.duplicates + result.quarantined:
        raise RuntimeError(f"ingestion lost lines: {result}")
    context.log.info(
        f"{result.batches} batches: {result.received} received = {result.loaded} loaded + "
        f"{result.duplicates} duplicates + {result.quarantined} quarantined"
    )
    yield dg.MaterializeResult(
        asset_key=CHANGE_LOG,
        metadata={
            **result.as_metadata(),
            "load_id": result.load_id or 0,
            "dagster/row_count": log_rows,
        },
    )
    yield dg.MaterializeResult(
        asset_key=QUARANTINE,
        metadata={
            "quarantined": result.quarantined,
            **{f"reason/{reason}": count for reason, count in result.quarantine_reasons.items()},
            "dagster/row_count": quarantine_rows,
        },
    )


class RebuildConfig(dg.Config):
    """Set full_rebuild to recompute from the whole change log instead of what changed."""

    full_rebuild: bool = False


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["crm", table],
            description=f"{text} Current state, newest value of each field.",
            deps=[CHANGE_LOG],
            kinds={"duckdb"},
            group_name="crm_state",
        )
        for table, text in CURRENT_STATE_TABLES.items()
    ],
    pool=DUCKDB_WRITER_POOL,
)
def crm_current_state(
    context: dg.AssetExecutionContext, config: RebuildConfig, state_store: StateStore
):
    """Rebuild the records touched since the last refresh, field by field, newest change first."""
    with state_store.get_connection() as conn:
        rebuilt = refresh_current_state(conn, full_rebuild=config.full_rebuild)
        counts = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in CURRENT_STATE_TABLES
        }
    for table in CURRENT_STATE_TABLES:
        yield dg.MaterializeResult(
            asset_key=["crm", table],
            metadata={"records_rebuilt": rebuilt.get(table, 0), "dagster/row_count": counts[table]},
        )
