"""Where every contact and account stands: the state machine run over their timelines.

A refresh recomputes only the entities touched since its watermark (new changes to them, to
their deals, activities or subscriptions, or a time-based move that fell due since the last
refresh). For each of them it rebuilds the whole timeline from the change log, so the result
never depends on how changes were batched: a full rebuild gives the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl

from revorch import clock
from revorch.lifecycle.config import LifecycleConfig
from revorch.lifecycle.machine import FoldResult, fold
from revorch.state.scratch import path_literal, scratch_folder

SQL_DIR = Path(__file__).parent
# Entities whose moves are computed and folded at once; a larger scope goes in shards.
SHARD_ENTITIES = 1_000_000

# Contacts with new changes, and every contact a changed deal or activity refers to now or
# ever did (a deal moved to another contact changes both), whatever order they arrived in.
CONTACT_SCOPE_SQL = """
WITH touched AS (
    SELECT DISTINCT object_type, object_id FROM change_log
    WHERE load_id > $since AND object_type IN ('contact', 'deal', 'activity')
)
SELECT object_id FROM touched WHERE object_type = 'contact'
UNION
SELECT r.contact_id FROM stages.contact_references AS r
JOIN touched AS t ON t.object_type = r.object_type AND t.object_id = r.object_id
"""

# Every contact a deal or activity named, by the change that named it: the contact scope reads
# these few columns, not the properties of every deal and activity change in the change log.
# Kept in the contact lifecycle's transaction, so it holds every load up to its watermark.
CONTACT_REFERENCES = "stages.contact_references"
REFERENCES_WATERMARK = "stages/contact_references"
CONTACT_REFERENCES_SQL = """
SELECT DISTINCT object_type, object_id, properties->>'contact_id' AS contact_id
FROM change_log
WHERE object_type IN ('deal', 'activity') AND (properties->>'contact_id') IS NOT NULL
  AND load_id > $since AND load_id <= $upto
"""

ALL_CONTACTS_SQL = "SELECT DISTINCT object_id FROM change_log WHERE object_type = 'contact'"

# Accounts whose subscriptions changed (every account a changed subscription ever belonged
# to), or whose time-based moves fell due since last time.
ACCOUNT_SCOPE_SQL = """
WITH touched AS (
    SELECT DISTINCT object_id FROM change_log
    WHERE load_id > $since AND object_type = 'subscription'
)
SELECT (c.properties->>'company_id') FROM change_log AS c JOIN touched AS t USING (object_id)
WHERE c.object_type = 'subscription' AND (c.properties->>'company_id') IS NOT NULL
UNION
SELECT company_id FROM subscriptions
WHERE company_id IS NOT NULL AND (
    start_date::TIMESTAMPTZ BETWEEN $previous_as_of AND $as_of
    OR start_date::TIMESTAMPTZ + to_days(CAST($onboarding_days AS INTEGER))
       BETWEEN $previous_as_of AND $as_of
    OR end_date::TIMESTAMPTZ - to_days(CAST($renewal_window_days AS INTEGER))
       BETWEEN $previous_as_of AND $as_of)
"""

ALL_ACCOUNTS_SQL = "SELECT DISTINCT company_id FROM subscriptions WHERE company_id IS NOT NULL"

# Which keys each refresh recomputed, at which load and clock: what reads a table after it (a
# keyed table, an agent, a metric) asks for the keys recomputed since its own watermark.
REFRESHES_SQL = (
    "CREATE TABLE IF NOT EXISTS stages.keyed_refreshes (table_name VARCHAR NOT NULL, "
    "key VARCHAR NOT NULL, load_id BIGINT, as_of TIMESTAMPTZ)"
)


@dataclass(frozen=True)
class LifecycleRefresh:
    entities: int  # entities recomputed
    transitions: int
    forbidden: int
    as_of: object


def table_exists(conn: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    """Whether the table ``schema.name`` exists."""
    return bool(
        conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name || '.' || table_name = ?",
            [qualified],
        ).fetchone()[0]
    )


def refresh_contact_lifecycle(
    conn: duckdb.DuckDBPyConnection,
    config: LifecycleConfig,
    *,
    full_rebuild: bool = False,
    shard_entities: int | None = None,
) -> LifecycleRefresh:
    contacts, engagement = config.contacts, config.engagement
    return _refresh(
        conn,
        entity_type="contact",
        watermark="stages/contact_lifecycle",
        scope_sql=ALL_CONTACTS_SQL if full_rebuild else CONTACT_SCOPE_SQL,
        points_sql=(SQL_DIR / "contact_points.sql").read_text(),
        parameters={
            "crm_values": list(contacts.crm_lifecycle_stages),
            "crm_stages": list(contacts.crm_lifecycle_stages.values()),
            "disqualifying_statuses": contacts.disqualifying_lead_statuses,
            "weight_names": list(engagement.weights),
            "weights": list(engagement.weights.values()),
            "window_days": engagement.window_days,
            "mql_threshold": engagement.mql_threshold,
            "buying_signals": engagement.buying_signals,
        },
        scope_parameters={},
        machine=contacts,
        full_rebuild=full_rebuild,
        shard_entities=shard_entities,
        keep=_keep_contact_references,
    )


def _keep_contact_references(
    conn: duckdb.DuckDBPyConnection, since: int, upto: int, full_rebuild: bool
) -> None:
    """Add the loads after ``since`` up to ``upto`` to stages.contact_references (all of them
    when it does not exist yet, or on a full rebuild). The table has its own watermark: a
    sharded refresh commits it with its first shard, and one that dies after that leaves the
    lifecycle's watermark behind, so the next must not add those loads again."""
    exists = table_exists(conn, CONTACT_REFERENCES)
    if full_rebuild or not exists:
        conn.execute(
            f"CREATE OR REPLACE TABLE {CONTACT_REFERENCES} AS {CONTACT_REFERENCES_SQL}",
            {"since": -1, "upto": upto},
        )
    else:
        kept, _ = _watermark(conn, REFERENCES_WATERMARK)
        conn.execute(
            f"INSERT INTO {CONTACT_REFERENCES} {CONTACT_REFERENCES_SQL}",
            {"since": max(since, kept), "upto": upto},
        )
    save_watermark(conn, REFERENCES_WATERMARK, upto, None)


def refresh_account_lifecycle(
    conn: duckdb.DuckDBPyConnection,
    config: LifecycleConfig,
    *,
    full_rebuild: bool = False,
    shard_entities: int | None = None,
) -> LifecycleRefresh:
    accounts = config.accounts
    timing = {
        "onboarding_days": accounts.onboarding_days,
        "renewal_window_days": accounts.renewal_window_days,
    }
    return _refresh(
        conn,
        entity_type="company",
        watermark="stages/account_lifecycle",
        scope_sql=ALL_ACCOUNTS_SQL if full_rebuild else ACCOUNT_SCOPE_SQL,
        points_sql=(SQL_DIR / "account_points.sql").read_text(),
        parameters={**timing, "activation_utilization": accounts.activation_utilization},
        scope_parameters={} if full_rebuild else timing,
        machine=accounts,
        full_rebuild=full_rebuild,
        shard_entities=shard_entities,
        time_based=True,
    )


def _refresh(
    conn: duckdb.DuckDBPyConnection,
    *,
    entity_type: str,
    watermark: str,
    scope_sql: str,
    points_sql: str,
    parameters: dict,
    scope_parameters: dict,
    machine,
    full_rebuild: bool,
    time_based: bool = False,
    keep: Callable[[duckdb.DuckDBPyConnection, int, int, bool], None] | None = None,
    shard_entities: int | None = None,
) -> LifecycleRefresh:
    shard_entities = shard_entities or SHARD_ENTITIES
    conn.execute("BEGIN TRANSACTION")
    try:
        since, previous_as_of = _watermark(conn, watermark)
        upto = conn.execute("SELECT coalesce(max(load_id), 0) FROM change_log").fetchone()[0]
        if keep:  # what the scope reads, brought up to the loads this refresh sees
            keep(conn, since, upto, full_rebuild)
        as_of = clock.now(conn)
        if full_rebuild:
            scope_args = {}
        else:
            scope_args = {"since": since}
            if time_based:
                scope_args |= {
                    **scope_parameters,
                    **since_last_clock(previous_as_of, as_of),
                }
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE scope AS SELECT * FROM ({scope_sql}) AS s(entity_id)",
            scope_args,
        )
        entities = conn.execute("SELECT count(*) FROM scope").fetchone()[0]
        transitions = forbidden = 0
        args = {**parameters, **({"as_of": as_of} if time_based else {})}
        shards = max(1, math.ceil(entities / shard_entities))
        with _spread_points(conn, points_sql, args, shards) as points_of:
            for shard in _in_shards(conn, shards):
                if shard:  # each shard commits: DuckDB holds a transaction's rows in memory
                    conn.execute("COMMIT")
                    conn.execute("BEGIN TRANSACTION")
                result = fold(points_of(shard), machine) if entities else None
                _replace(conn, entity_type, result)
                if result is not None:
                    transitions += result.transitions.height
                    forbidden += result.forbidden.height
        record_recomputed(conn, watermark, "entity_id", upto, as_of)
        save_watermark(conn, watermark, upto, as_of)
        conn.execute("DROP TABLE scope")
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return LifecycleRefresh(entities, transitions, forbidden, as_of)


def _points(conn: duckdb.DuckDBPyConnection, points_sql: str, args: dict) -> pl.DataFrame:
    """The points as a frame, through a temp table: exported straight to polars, the points
    query of a million contacts in a ten-million-contact store hung in DuckDB 1.5.5 (every
    thread parked, no CPU, never interrupted); written to a table first it took 11 s."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE points AS {points_sql}", args)
    try:
        return conn.execute("SELECT * FROM points").pl()
    finally:
        conn.execute("DROP TABLE points")


@contextmanager
def _spread_points(
    conn: duckdb.DuckDBPyConnection, points_sql: str, args: dict, shards: int
) -> Iterator[Callable[[int], pl.DataFrame]]:
    """The points of each shard of ``scope``'s entities (by id hash, as ``_in_shards`` cuts
    them), computed once for all of them.

    One shard reads its points from the query. Queried shard by shard, each shard would scan
    the whole change log and the activities again (10 shards: 2.2 times the CPU of one piece,
    bench/README.md), so one pass spreads every entity's points over a Parquet file per
    shard (DuckDB spills what it does not hold) and each shard reads its own.
    """
    if shards == 1:
        yield lambda shard: _points(conn, points_sql, args)
        return
    with scratch_folder(conn, "revorch-points-") as folder:
        conn.execute(
            f"COPY (SELECT hash(entity_id) % {shards} AS shard, * FROM ({points_sql})) "
            f"TO {path_literal(folder)} (FORMAT parquet, PARTITION_BY (shard))",
            args,
        )

        def points_of(shard: int) -> pl.DataFrame:
            if not Path(folder, f"shard={shard}").is_dir():  # no points: an empty frame
                return _points(conn, f"SELECT * FROM ({points_sql}) WHERE false", args)
            files = path_literal(Path(folder, f"shard={shard}", "*.parquet"))
            return conn.execute(f"SELECT * EXCLUDE (shard) FROM read_parquet({files})").pl()

        yield points_of


def _in_shards(conn: duckdb.DuckDBPyConnection, shards: int) -> Iterator[int]:
    """Hold in the temp table ``scope`` one of ``shards`` shards of its entities (by id hash)
    at a time, then all of them again. Every entity's points are its own, so folding shard by
    shard gives what one fold gives; in one piece, the points of ten million contacts (their
    changes, activities and rolling scores) outgrow DuckDB's memory limit. The caller commits
    each shard; the refresh's watermark goes with the last, so one that dies part-way is
    recomputed whole by the next (a recomputed entity's rows are replaced)."""
    if shards == 1:
        yield 0
        return
    conn.execute("CREATE OR REPLACE TEMP TABLE whole_scope AS SELECT * FROM scope")
    for shard in range(shards):
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE scope AS "
            "SELECT * FROM whole_scope WHERE hash(entity_id) % $shards = $shard",
            {"shards": shards, "shard": shard},
        )
        yield shard
    conn.execute("CREATE OR REPLACE TEMP TABLE scope AS SELECT * FROM whole_scope")
    conn.execute("DROP TABLE whole_scope")


def _replace(conn: duckdb.DuckDBPyConnection, entity_type: str, result: FoldResult | None) -> None:
    for table in ("entity_stages", "stage_transitions", "forbidden_transitions"):
        conn.execute(
            f"DELETE FROM stages.{table} WHERE entity_type = ? "
            "AND entity_id IN (SELECT entity_id FROM scope)",
            [entity_type],
        )
    if result is None:
        return
    for table, frame in (
        ("entity_stages", result.current),
        ("stage_transitions", result.transitions),
        ("forbidden_transitions", result.forbidden),
    ):
        conn.register("folded", frame)
        conn.execute(
            f"INSERT INTO stages.{table} BY NAME SELECT ? AS entity_type, * FROM folded",
            [entity_type],
        )
        conn.unregister("folded")


def record_recomputed(
    conn: duckdb.DuckDBPyConnection, name: str, column: str, load_id: int, as_of
) -> None:
    """Record the keys of the temp table ``scope`` (its ``column``) as recomputed by ``name``
    at ``load_id`` and ``as_of``, in stages.keyed_refreshes (the newest refresh of each key)."""
    conn.execute(REFRESHES_SQL)
    conn.execute(
        "DELETE FROM stages.keyed_refreshes WHERE table_name = ? "
        f"AND key IN (SELECT {column} FROM scope)",
        [name],
    )
    conn.execute(
        f"INSERT INTO stages.keyed_refreshes SELECT DISTINCT ?, {column}, ?, ? FROM scope "
        f"WHERE {column} IS NOT NULL",
        [name, load_id, as_of],
    )


def _watermark(conn: duckdb.DuckDBPyConnection, name: str):
    row = conn.execute(
        "SELECT load_id, as_of FROM state_watermarks WHERE name = ?", [name]
    ).fetchone()
    return (row[0], row[1]) if row else (0, None)


def save_watermark(conn: duckdb.DuckDBPyConnection, name: str, load_id: int, as_of) -> None:
    # Delete and insert rather than INSERT OR REPLACE: DuckLake has no primary keys.
    conn.execute("DELETE FROM state_watermarks WHERE name = ?", [name])
    conn.execute(
        "INSERT INTO state_watermarks (name, load_id, updated_at, as_of) VALUES (?, ?, now(), ?)",
        [name, load_id, as_of],
    )


def since_last_clock(previous, now) -> dict:
    """The span whose time-based moves are due again: strictly after the previous clock up to
    now, or, when the clock went back (a replay set earlier), the span it went back over."""
    if previous is None or now is None or now >= previous:
        # Strictly after the previous clock: BETWEEN is inclusive on both ends.
        start = None if previous is None else previous + timedelta(microseconds=1)
        return {"previous_as_of": start, "as_of": now}
    return {"previous_as_of": now, "as_of": previous}
