"""The read-out of the holdouts: what each playbook changes, with its interval.

``metrics.playbook_units`` holds every randomized (playbook, entity) and outcome whose horizon
has passed; ``metrics.playbook_uplift`` one row per playbook and outcome with the effect of
treatment against holdout (revorch/experiments/uplift.py); docs/metrics.md says how far to
trust it.

The read-out follows a daily cadence, as its statistics do (outcomes mature over days, the
decision is taken at a pre-registered date): a unit counts once its horizon passed by the
start of the clock day, and the asset recomputes only when that changes anything: a new
clock day, another holdouts declaration, another set of mature units, or a full rebuild.
Otherwise the run keeps the tables as they are, which is what a recompute would give.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from orch_assets.governance.assets import DISPATCHED_ACTIONS
from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL, RebuildConfig
from orch_assets.sql_files import run_sql_file
from resources import GovernanceResource, StateStore
from revorch import clock
from revorch.governance.holdouts import Holdouts

SQL_DIR = Path(__file__).parent
UPLIFT_SCHEMA = {
    "playbook": pl.String,
    "outcome": pl.String,
    "horizon_days": pl.Int32,
    "status": pl.String,  # final, interim, or waiting (too few mature units for an interval)
    "units_waiting": pl.Int64,  # exposed, horizon not yet passed
    "n_treatment": pl.Int64,
    "n_holdout": pl.Int64,
    "mean_treatment": pl.Float64,
    "mean_holdout": pl.Float64,
    "effect": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "std_error": pl.Float64,
    "p_value": pl.Float64,
    "adjusted": pl.Boolean,
    "variance_reduction": pl.Float64,
    "analysis_date": pl.Date,
    "computed_at": pl.Datetime("us", "UTC"),
}


# What the read-out depends on besides the outcomes of its mature units: which units are
# mature (their exposure, arm and playbook) by the start of the clock day.
MATURE_UNITS_SQL = """
SELECT count(*), coalesce(sum(hash(playbook, entity_type, entity_id, arm, exposed_at)), 0)
FROM governance.holdout_assignments
WHERE randomized AND entity_type IN ('contact', 'deal', 'subscription')
  AND exposed_at + to_days(CASE entity_type WHEN 'subscription' THEN $renewal_horizon_days
                                            ELSE $horizon_days END) <= $mature_by
"""


def read_out_key(conn: duckdb.DuckDBPyConnection, holdouts: Holdouts) -> tuple[datetime, str]:
    """The start of the clock day, and a key that changes whenever the read-out can: the
    day, the holdouts declaration, and the set of units mature by that day's start."""
    now = clock.now(conn)
    mature_by = now.replace(hour=0, minute=0, second=0, microsecond=0)
    count, total = conn.execute(
        MATURE_UNITS_SQL,
        {
            "horizon_days": holdouts.horizon_days,
            "renewal_horizon_days": holdouts.renewal_horizon_days,
            "mature_by": mature_by,
        },
    ).fetchone()
    parts = (
        mature_by.date(),
        holdouts.horizon_days,
        holdouts.renewal_horizon_days,
        holdouts.analysis_date,
        count,
        total,
    )
    return mature_by, "|".join(str(part) for part in parts)


def stored_read_out_key(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The key of the stored read-out, None when there is none."""
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'metrics' "
            "AND database_name = current_database()"
        ).fetchall()
    }
    if not {"playbook_uplift", "playbook_units", "playbook_uplift_key"} <= tables:
        return None
    row = conn.execute("SELECT key FROM metrics.playbook_uplift_key").fetchone()
    return row[0] if row else None


def playbook_uplift_rows(
    conn: duckdb.DuckDBPyConnection, holdouts: Holdouts, *, full_rebuild: bool = True
) -> list[dict] | None:
    """Rebuild metrics.playbook_units and estimate every playbook and outcome in it; unless
    ``full_rebuild``, only when the read-out's key changed (None: the stored one stands)."""
    from revorch.experiments.uplift import estimate_uplift

    mature_by, key = read_out_key(conn, holdouts)
    if not full_rebuild and stored_read_out_key(conn) == key:
        return None
    conn.execute("CREATE SCHEMA IF NOT EXISTS metrics")
    run_sql_file(
        conn,
        SQL_DIR / "playbook_units.sql",
        {
            "horizon_days": holdouts.horizon_days,
            "renewal_horizon_days": holdouts.renewal_horizon_days,
            "mature_by": mature_by.isoformat(),  # written into the SQL as a literal
        },
    )
    units = conn.execute("SELECT * FROM metrics.playbook_units").pl()
    today = mature_by.date()
    final = holdouts.analysis_date is not None and today >= holdouts.analysis_date
    rows = []
    for (playbook, outcome), group in units.group_by(["playbook", "outcome"], maintain_order=True):
        mature = group.filter(pl.col("mature"))
        estimate = estimate_uplift(
            mature["value"].to_numpy(),
            (mature["arm"] == "treatment").to_numpy(),
            mature["covariate"].to_numpy(),
        )
        row = {
            "playbook": playbook,
            "outcome": outcome,
            "horizon_days": int(group["horizon_days"][0]),
            "units_waiting": group.height - mature.height,
            "n_treatment": int((mature["arm"] == "treatment").sum()),
            "n_holdout": int((mature["arm"] == "holdout").sum()),
            "analysis_date": holdouts.analysis_date,
            "computed_at": datetime.now(UTC),
            "status": "waiting",
        }
        if estimate is not None:
            row |= estimate.as_dict() | {"status": "final" if final else "interim"}
        rows.append(row)
    frame = pl.DataFrame(
        [{column: row.get(column) for column in UPLIFT_SCHEMA} for row in rows],
        schema=UPLIFT_SCHEMA,
    )
    conn.register("uplift_rows", frame)
    conn.execute("CREATE OR REPLACE TABLE metrics.playbook_uplift AS SELECT * FROM uplift_rows")
    conn.unregister("uplift_rows")
    conn.execute("CREATE OR REPLACE TABLE metrics.playbook_uplift_key AS SELECT ? AS key", [key])
    return rows


def stored_uplift_rows(conn: duckdb.DuckDBPyConnection) -> list[dict]:
    """The rows of the stored read-out."""
    return conn.execute("SELECT * FROM metrics.playbook_uplift").pl().to_dicts()


def uplift_metadata(rows: list[dict]) -> dict[str, float | int]:
    """Numbers the UI plots run after run: the effect and its interval per playbook/outcome."""
    metadata: dict[str, float | int] = {"playbook_outcomes": len(rows)}
    for row in rows:
        prefix = f"{row['playbook']}/{row['outcome']}"
        metadata[f"{prefix}/n_treatment"] = row["n_treatment"]
        metadata[f"{prefix}/n_holdout"] = row["n_holdout"]
        for key in ("effect", "ci_low", "ci_high"):
            if row.get(key) is not None:
                metadata[f"{prefix}/{key}"] = round(float(row[key]), 4)
    return metadata


@dg.asset(
    key=["metrics", "playbook_uplift"],
    deps=[
        DISPATCHED_ACTIONS,
        dg.AssetKey(["stages", "contact_lifecycle"]),
        dg.AssetKey(["crm", "activities"]),
        dg.AssetKey(["crm", "deals"]),
        dg.AssetKey(["crm", "subscriptions"]),
    ],
    group_name="metrics",
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    automation_condition=dg.AutomationCondition.eager(),
)
def playbook_uplift(
    config: RebuildConfig, state_store: StateStore, governance: GovernanceResource
) -> dg.MaterializeResult:
    """Tables metrics.playbook_units and metrics.playbook_uplift: for each playbook (handoff,
    agent action type) and outcome (next stage within the horizon, days to it, deal won,
    renewal, expansion ARR), the effect of treatment against its randomized holdout with a
    95% interval, adjusted for pre-exposure activity; final from the pre-registered analysis
    date in config/policy.yaml, interim before it. Recomputed once per clock day, or sooner
    when the set of mature units or the holdouts declaration changes (``recomputed`` in the
    metadata says whether this run did)."""
    holdouts = governance.policy().holdouts
    with state_store.get_connection() as conn:
        rows = playbook_uplift_rows(conn, holdouts, full_rebuild=config.full_rebuild)
        recomputed = rows is not None
        if rows is None:
            rows = stored_uplift_rows(conn)
    return dg.MaterializeResult(metadata=uplift_metadata(rows) | {"recomputed": recomputed})
