"""Business metrics as views in the ``metrics`` schema, for analysts and for the Dagster UI.

Each asset (re)creates its views from the SQL files beside this module (only when their SQL
changed), then reads their headline numbers back as materialization metadata, so the UI plots
them run after run. docs/metrics.md gives every formula, view and column.

The views over the whole history read small tables kept up to date by key
(revorch/lifecycle/keyed_tables.py): each run recomputes the rows of the contacts and accounts
touched since its last run (funnel progress, SLA entries, stage stays) and appends the new
subscription ARR changes, so a run costs what changed, not the store; a full rebuild
(``full_rebuild``) gives the same tables (tests/test_metrics_incremental.py).

Ratios (conversion, win rate, SLA compliance, retention) are reported in percent, rounded to
one decimal (keys ending in ``_pct``). Undefined ratios (no closed deal, no SLA entry that is
due, no starting ARR) are left out of the metadata rather than reported as 0; counts and sums
are always there.
"""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL, RebuildConfig
from orch_assets.sql_files import render, run_sql_file
from resources import LifecycleConfigResource, StateStore
from revorch.lifecycle.config import LifecycleConfig
from revorch.lifecycle.keyed_tables import (
    CURRENT_STATE,
    refresh_keyed_table,
    sql_hash,
    store_hash,
    stored_hash,
    table_exists,
)

SQL_DIR = Path(__file__).parent
EAGER = dg.AutomationCondition.eager()

CONTACT_LIFECYCLE = dg.AssetKey(["stages", "contact_lifecycle"])
ACCOUNT_LIFECYCLE = dg.AssetKey(["stages", "account_lifecycle"])
CHANGE_LOG = dg.AssetKey(["crm", "change_log"])


def crm(table: str) -> dg.AssetKey:
    return dg.AssetKey(["crm", table])


FUNNEL_STEPS = [
    ("lead", "mql"),
    ("mql", "sql"),
    ("sql", "opportunity"),
    ("opportunity", "customer"),
]
DEAL_TYPES = ["new_business", "renewal", "expansion"]


def create_views(
    conn: duckdb.DuckDBPyConnection, *names: str, parameters: dict | None = None
) -> None:
    """Create or replace the views ``metrics.<name>``, each from ``<name>.sql``."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
    for name in names:
        run_sql_file(conn, SQL_DIR / f"{name}.sql", parameters or {})


# --- the tables the views read, kept by key -------------------------------------------------

CONTACT_MACHINE = "stages/contact_lifecycle"
ACCOUNT_MACHINE = "stages/account_lifecycle"


@dataclass(frozen=True)
class KeyedMetricTable:
    """metrics.<name>, its rows from ``<name>.sql`` for the keys in ``scope``, kept by ``key``:
    each run recomputes the keys ``touched`` (a file) says may differ since its last run, all
    of them (``all_keys``) on the first run, a full rebuild or when the SQL changed. ``inputs``
    name the derived tables it reads (by watermark): loads are seen up to the slowest."""

    name: str
    key: str
    touched: str
    all_keys: str
    inputs: tuple[str, ...]


FUNNEL_PROGRESS = KeyedMetricTable(
    "funnel_progress",
    "contact_id",
    "touched_contacts",
    "SELECT entity_id FROM stages.stage_transitions WHERE entity_type = 'contact'",
    (CURRENT_STATE, CONTACT_MACHINE),
)
SLA_FIRST_TOUCHES = KeyedMetricTable(
    "sla_first_touches",
    "contact_id",
    "touched_contacts",
    "SELECT entity_id FROM stages.stage_transitions WHERE entity_type = 'contact'",
    (CURRENT_STATE, CONTACT_MACHINE),
)
STAGE_STAYS = KeyedMetricTable(
    "stage_stays",
    "entity_key",
    "touched_entities",
    "SELECT entity_type || ':' || entity_id FROM stages.stage_transitions",
    (CONTACT_MACHINE, ACCOUNT_MACHINE),
)


def refresh_table(
    conn: duckdb.DuckDBPyConnection,
    table: KeyedMetricTable,
    parameters: dict | None = None,
    *,
    full_rebuild: bool = False,
) -> int:
    """Bring metrics.<name> up to date (see ``KeyedMetricTable``) in the caller's transaction;
    returns how many keys were recomputed."""
    conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
    refreshed = refresh_keyed_table(
        conn,
        table=f"metrics.{table.name}",
        key=table.key,
        rows_sql=render((SQL_DIR / f"{table.name}.sql").read_text(), parameters or {}),
        touched_sql=(SQL_DIR / f"{table.touched}.sql").read_text(),
        all_keys_sql=table.all_keys,
        full_rebuild=full_rebuild,
        inputs=table.inputs,
    )
    return refreshed.keys


SUBSCRIPTION_ARR = "metrics.subscription_arr"


def refresh_subscription_arr(conn: duckdb.DuckDBPyConnection, *, full_rebuild: bool = False) -> int:
    """Append the ARR changes of the loads after its watermark to metrics.subscription_arr
    (subscription_arr.sql), or read them all on the first run, a full rebuild or when the SQL
    changed; in the caller's transaction. Returns the rows added."""
    sql = (SQL_DIR / "subscription_arr.sql").read_text()
    conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
    seen = conn.execute(
        "SELECT load_id FROM state_watermarks WHERE name = ?", [SUBSCRIPTION_ARR]
    ).fetchone()
    exists = table_exists(conn, SUBSCRIPTION_ARR)
    upto = conn.execute("SELECT coalesce(max(load_id), 0) FROM change_log").fetchone()[0]
    before = 0
    if (
        full_rebuild
        or seen is None
        or not exists
        or stored_hash(conn, SUBSCRIPTION_ARR) != sql_hash(sql)
    ):
        conn.execute(
            f"CREATE OR REPLACE TABLE {SUBSCRIPTION_ARR} AS {sql}", {"since": -1, "upto": upto}
        )
    else:
        before = conn.execute(f"SELECT count(*) FROM {SUBSCRIPTION_ARR}").fetchone()[0]
        conn.execute(f"INSERT INTO {SUBSCRIPTION_ARR} {sql}", {"since": seen[0], "upto": upto})
    added = conn.execute(f"SELECT count(*) FROM {SUBSCRIPTION_ARR}").fetchone()[0] - before
    conn.execute("DELETE FROM state_watermarks WHERE name = ?", [SUBSCRIPTION_ARR])
    conn.execute(
        "INSERT INTO state_watermarks (name, load_id, updated_at, as_of) "
        "VALUES (?, ?, now(), NULL)",
        [SUBSCRIPTION_ARR, upto],
    )
    store_hash(conn, SUBSCRIPTION_ARR, sql_hash(sql))
    return added


def sla_parameters(config: LifecycleConfig) -> dict[str, object]:
    """The SLA thresholds of the lifecycle config, as the SQL of ``sla_entries`` names them."""
    hours = config.handoffs.sla.first_touch_hours
    return {
        "sla_stages": list(hours),
        "sla_hours": [float(h) for h in hours.values()],
        "touch_activities": list(config.handoffs.sla.touch_activities),
    }


def percent(ratio: float | None) -> float | None:
    """A ratio as a percentage rounded to one decimal (0.38160 -> 38.2); None stays None."""
    return None if ratio is None else round(100 * float(ratio), 1)


def _defined_numbers(values: dict[str, object]) -> dict[str, float | int]:
    """Metadata without the undefined (NULL) values, numbers as plain floats and ints."""
    return {
        key: value if isinstance(value, int) else float(value)
        for key, value in values.items()
        if value is not None
    }


# --- what each asset reports: one query over its view -------------------------------------


def funnel_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, float | int]:
    rows = conn.execute(
        "SELECT stage, reached, conversion_to_next FROM metrics.funnel_conversion "
        "WHERE lead_source = '(all)'"
    ).fetchall()
    reached = {stage: count for stage, count, _ in rows}
    rate = {stage: conversion for stage, _, conversion in rows}
    values: dict[str, object] = {
        f"{stage}_to_{following}_conversion_pct": percent(rate.get(stage))
        for stage, following in FUNNEL_STEPS
    }
    values |= {f"reached_{stage}": reached.get(stage, 0) for stage, _ in FUNNEL_STEPS}
    values["reached_customer"] = reached.get("customer", 0)
    return _defined_numbers(values)


def velocity_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, float | int]:
    rows = conn.execute(
        "SELECT stage, median_days, p90_days, completed_stays FROM metrics.stage_velocity"
    ).fetchall()
    values: dict[str, object] = {}
    for stage, median, p90, completed in rows:
        values[f"median_days_in_{stage}"] = median
        values[f"p90_days_in_{stage}"] = p90
        values[f"completed_stays_in_{stage}"] = completed
    return _defined_numbers(values)


def win_rate_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, float | int]:
    overall = conn.execute(
        "SELECT won_deals, lost_deals, win_rate, won_amount FROM metrics.win_rate "
        "WHERE period = 'all'"
    ).fetchone()
    latest = conn.execute(
        "SELECT win_rate FROM metrics.win_rate WHERE quarter_start IS NOT NULL "
        "ORDER BY quarter_start DESC LIMIT 1"
    ).fetchone()
    won, lost, rate, amount = overall or (0, 0, None, 0.0)
    return _defined_numbers(
        {
            "win_rate_pct": percent(rate),
            "win_rate_latest_quarter_pct": percent(latest[0]) if latest else None,
            "won_deals": won,
            "lost_deals": lost,
            "won_amount": amount,
        }
    )


def pipeline_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, float | int]:
    rows = conn.execute(
        "SELECT deal_type, open_deals, pipeline_value FROM metrics.pipeline "
        "WHERE deal_stage = '(all)'"
    ).fetchall()
    by_type = {deal_type: (count, value) for deal_type, count, value in rows}
    count, value = by_type.get("(all)", (0, 0.0))
    values: dict[str, object] = {"open_deals": count, "pipeline_value": value}
    for deal_type in DEAL_TYPES:
        count, value = by_type.get(deal_type, (0, 0.0))
        values[f"open_deals_{deal_type}"] = count
        values[f"pipeline_value_{deal_type}"] = value
    return _defined_numbers(values)


def sla_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, float | int]:
    rows = conn.execute(
        "SELECT stage, met, missed, pending, compliance FROM metrics.sla_compliance"
    ).fetchall()
    values: dict[str, object] = {"sla_met": 0, "sla_missed": 0, "sla_pending": 0}
    for stage, met, missed, pending, compliance in rows:
        if stage == "(all)":
            values |= {
                "sla_compliance_pct": percent(compliance),
                "sla_met": met,
                "sla_missed": missed,
                "sla_pending": pending,
            }
        else:
            values[f"sla_compliance_{stage}_pct"] = percent(compliance)
    return _defined_numbers(values)


def retention_metadata(conn: duckdb.DuckDBPyConnection) -> dict[str, float | int]:
    row = conn.execute(
        "SELECT grr, nrr, starting_arr, churned_arr, contraction_arr, expansion_arr, accounts "
        "FROM metrics.revenue_retention"
    ).fetchone()
    keys = ["starting_arr", "churned_arr", "contraction_arr", "expansion_arr"]
    values: dict[str, object] = dict(zip(keys, row[2:6], strict=True))
    values |= {"grr_pct": percent(row[0]), "nrr_pct": percent(row[1])}
    values["cohort_accounts"] = row[6]
    return _defined_numbers(values)


# --- the assets ------------------------------------------------------------------------------


def _metric_asset_args(name: str, deps: list[dg.AssetKey]) -> dict:
    return {
        "key": ["metrics", name],
        "deps": deps,
        "group_name": "metrics",
        "kinds": {"duckdb"},
        "pool": DUCKDB_WRITER_POOL,
        "automation_condition": EAGER,
    }


@dg.asset(**_metric_asset_args("funnel_conversion", [CONTACT_LIFECYCLE, crm("contacts")]))
def funnel_conversion(config: RebuildConfig, state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.funnel_conversion: contacts that reached lead, mql, sql, opportunity and
    customer, and the conversion from each stage to the next (MQL -> SQL above all), overall
    and by lead source (over metrics.funnel_progress, one row per contact)."""
    with state_store.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        keys = refresh_table(conn, FUNNEL_PROGRESS, full_rebuild=config.full_rebuild)
        create_views(conn, "funnel_conversion")
        conn.execute("COMMIT")
        metadata = funnel_metadata(conn)
    return dg.MaterializeResult(metadata={**metadata, "contacts_recomputed": keys})


@dg.asset(
    **_metric_asset_args("stage_velocity", [CONTACT_LIFECYCLE, ACCOUNT_LIFECYCLE, CHANGE_LOG])
)
def stage_velocity(config: RebuildConfig, state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.stage_velocity: median and p90 days that contacts and accounts spend in
    each stage (completed stays), and how many stays are still open (over metrics.stage_stays,
    one row per stay)."""
    with state_store.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        keys = refresh_table(conn, STAGE_STAYS, full_rebuild=config.full_rebuild)
        create_views(conn, "stage_velocity")
        conn.execute("COMMIT")
        metadata = velocity_metadata(conn)
    return dg.MaterializeResult(metadata={**metadata, "entities_recomputed": keys})


@dg.asset(**_metric_asset_args("win_rate", [crm("deals")]))
def win_rate(state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.win_rate: closed-won / (closed-won + closed-lost) new-business deals,
    overall and by quarter of close."""
    with state_store.get_connection() as conn:
        create_views(conn, "win_rate")
        metadata = win_rate_metadata(conn)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(**_metric_asset_args("pipeline", [crm("deals")]))
def pipeline(state_store: StateStore) -> dg.MaterializeResult:
    """View metrics.pipeline: open deals and their value by deal stage and deal type."""
    with state_store.get_connection() as conn:
        create_views(conn, "pipeline")
        metadata = pipeline_metadata(conn)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    **_metric_asset_args(
        "sla_compliance", [CONTACT_LIFECYCLE, crm("activities"), crm("contacts"), CHANGE_LOG]
    )
)
def sla_compliance(
    config: RebuildConfig, state_store: StateStore, lifecycle: LifecycleConfigResource
) -> dg.MaterializeResult:
    """Views metrics.sla_entries (every entry into an SLA stage, met, missed or pending, over
    metrics.sla_first_touches) and metrics.sla_compliance: the share of MQL and SQL entries
    whose first sales touch came within the hours set in config/lifecycle.yaml."""
    parameters = sla_parameters(lifecycle.load())
    with state_store.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        keys = refresh_table(conn, SLA_FIRST_TOUCHES, parameters, full_rebuild=config.full_rebuild)
        create_views(conn, "sla_entries", "sla_compliance")
        conn.execute("COMMIT")
        metadata = sla_metadata(conn)
    return dg.MaterializeResult(metadata={**metadata, "contacts_recomputed": keys})


@dg.asset(
    **_metric_asset_args("revenue_retention", [crm("subscriptions"), crm("deals"), CHANGE_LOG])
)
def revenue_retention(config: RebuildConfig, state_store: StateStore) -> dg.MaterializeResult:
    """Views metrics.revenue_retention_accounts and metrics.revenue_retention: gross and net
    revenue retention (GRR, NRR) over the trailing 12 months ending at the clock, with
    starting, churned, contracted and expanded ARR (ARR history: metrics.subscription_arr)."""
    with state_store.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")
        added = refresh_subscription_arr(conn, full_rebuild=config.full_rebuild)
        create_views(conn, "revenue_retention_accounts", "revenue_retention")
        conn.execute("COMMIT")
        metadata = retention_metadata(conn)
    return dg.MaterializeResult(metadata={**metadata, "arr_changes_added": added})


metric_assets = [
    funnel_conversion,
    stage_velocity,
    win_rate,
    pipeline,
    sla_compliance,
    revenue_retention,
]
