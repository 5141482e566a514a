"""Build the current-state tables (contacts, deals, ...) from the change log.

For each record and each field, the value set by the newest change wins, by the change's own
``occurred_at`` (ties broken by a hash of the event id), never by arrival order.

The work is split into shards: per object type, and within a type by a hash of the record id,
so that no shard holds more than about ``shard_changes`` changes. Each shard is its own
transaction, so memory stays bounded however large the change log grows; the watermark moves
only after the last shard. A crash between shards loses nothing: the next refresh starts again
from the old watermark and every step below gives the same result when repeated.

- A full rebuild (the first one, or ``full_rebuild=True``) replays the whole change log, shard
  by shard.
- A refresh (``crm_current_state`` watermark) reads only the changes loaded since the last one.
  A record whose new changes all happened after its last known change is merged: each field
  the new changes set takes their newest value, every other field keeps its value. Any other
  touched record (a change that arrived late, or a merge being repeated) is replayed from its
  whole history in the change log, as a full rebuild would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from revorch.ingestion.change_log import property_columns
from revorch.state.scratch import scratch_folder

WATERMARK = "crm_current_state"

# About this many changes per shard: a shard of a million changes peaks at a few hundred MB.
SHARD_CHANGES = 1_000_000

# The newest change of each field wins; "ord" orders changes by time, then by event id hash.
RECORD_SQL = """
WITH changes AS (
    SELECT object_id, op, occurred_at,
           (epoch_us(occurred_at)::HUGEINT << 64) + hash(event_id) AS ord,
           json_keys(properties) AS keys,
           json_transform(properties, '{struct}') AS p
    FROM {source}
)
SELECT object_id AS id,
       {fields},
       min(occurred_at) AS _first_seen_at,
       max(occurred_at) AS _last_changed_at,
       count(*) AS _changes,
       arg_max(op = 'delete', ord) AS _deleted
FROM changes
GROUP BY object_id
"""

FIELD_SQL = (
    "TRY_CAST(arg_max_null(p.{column}, ord) FILTER (WHERE list_contains(keys, '{column}'))"
    " AS {data_type}) AS {column}"
)
# Whether any of the new changes set the field (a merge keeps the old value otherwise).
SET_SQL = "bool_or(list_contains(keys, '{column}')) AS \"set {column}\""
MERGE_SQL = """
SELECT f.id,
       {fields},
       coalesce(o._first_seen_at, f._first_seen_at) AS _first_seen_at,
       f._last_changed_at,
       coalesce(o._changes, 0) + f._changes AS _changes,
       f._deleted
FROM fresh AS f LEFT JOIN {table} AS o ON o.id = f.id
WHERE o.id IS NULL OR f._first_seen_at > o._last_changed_at
"""
MERGE_FIELD_SQL = 'CASE WHEN f."set {column}" THEN f.{column} ELSE o.{column} END AS {column}'


def refresh_current_state(
    conn: duckdb.DuckDBPyConnection,
    *,
    full_rebuild: bool = False,
    shard_changes: int = SHARD_CHANGES,
) -> dict[str, int]:
    """Bring every current-state table up to the change log; return records rebuilt per table."""
    since = 0 if full_rebuild else _watermark(conn)
    upto = conn.execute("SELECT coalesce(max(load_id), 0) FROM change_log").fetchone()[0]
    tables = dict(conn.execute("SELECT object_type, table_name FROM object_types").fetchall())
    # Changes per type in (since, upto]: a scan of the small columns only.
    changes = dict(
        conn.execute(
            "SELECT object_type, count(*) FROM change_log "
            "WHERE load_id > ? AND load_id <= ? GROUP BY object_type",
            [since, upto],
        ).fetchall()
    )
    rebuilt = {}
    for object_type, columns in property_columns(conn).items():
        table = tables[object_type]
        count = changes.get(object_type, 0)
        if since and not count:
            continue
        shards = max(1, math.ceil(count / shard_changes))
        with _spread(conn, object_type, since, upto, shards) as sources:
            rebuilt[table] = 0
            for shard, source in enumerate(sources):
                part = _Shard(conn, object_type, table, columns, shard, shards, source)
                conn.execute("BEGIN TRANSACTION")
                try:
                    rebuilt[table] += part.merge(upto) if since else part.replay()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
    # Delete and insert rather than INSERT OR REPLACE: DuckLake has no primary keys.
    conn.execute("BEGIN TRANSACTION")
    conn.execute("DELETE FROM state_watermarks WHERE name = ?", [WATERMARK])
    conn.execute(
        "INSERT INTO state_watermarks (name, load_id, updated_at) VALUES (?, ?, now())",
        [WATERMARK, upto],
    )
    conn.execute("COMMIT")
    return rebuilt


@contextmanager
def _spread(
    conn: duckdb.DuckDBPyConnection, object_type: str, since: int, upto: int, shards: int
) -> Iterator[list[str]]:
    """Where each shard reads its changes of (since, upto] from.

    One shard reads the change log. Several shards would each scan (and decompress) the whole
    log again, so one pass spreads the type's changes over a Parquet file per shard instead.
    """
    where = f"object_type = '{object_type}' AND load_id > {since} AND load_id <= {upto}"
    if shards == 1:
        yield [f"(SELECT * FROM change_log WHERE {where})"]
        return
    with scratch_folder(conn, "revorch-state-") as folder:
        conn.execute(
            f"COPY (SELECT hash(object_id) % {shards} AS shard, object_id, op, occurred_at, "
            f"event_id, properties FROM change_log WHERE {where}) "
            f"TO '{folder}' (FORMAT parquet, PARTITION_BY (shard))"
        )
        yield [
            f"read_parquet('{folder}/shard={shard}/*.parquet')"
            if Path(folder, f"shard={shard}").is_dir()
            else "(SELECT * FROM change_log WHERE false)"
            for shard in range(shards)
        ]


class _Shard:
    """The records of one object type whose id hashes to ``shard`` modulo ``shards``."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        object_type: str,
        table: str,
        columns: dict[str, str],
        shard: int,
        shards: int,
        source: str,
    ) -> None:
        self.conn, self.object_type, self.table, self.columns = conn, object_type, table, columns
        self.id_slice = f"hash(id) % {shards} = {shard}" if shards > 1 else "true"
        self.source = source  # this shard's changes of (since, upto]

    def replay(self) -> int:
        """Rebuild every record of the shard from its whole history (since is 0)."""
        self.conn.execute(f"DELETE FROM {self.table} WHERE {self.id_slice}")
        return self._insert(self._record_sql(self.source))

    def merge(self, upto: int) -> int:
        """Apply the changes loaded in (since, upto] to the records they touch."""
        conn, table = self.conn, self.table
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE fresh AS "
            + self._record_sql(self.source, tuple(SET_SQL.format(column=c) for c in self.columns))
        )
        fields = ",\n       ".join(MERGE_FIELD_SQL.format(column=c) for c in self.columns)
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE merged AS " + MERGE_SQL.format(fields=fields, table=table)
        )
        conn.execute(f"DELETE FROM {table} WHERE id IN (SELECT id FROM fresh)")
        conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM merged")
        late = conn.execute(
            "CREATE OR REPLACE TEMP TABLE late AS SELECT id FROM fresh ANTI JOIN merged USING (id)"
        ).fetchone()[0]
        if late:
            history = (
                f"(SELECT * FROM change_log WHERE object_type = '{self.object_type}' "
                f"AND load_id <= {upto} AND object_id IN (SELECT id FROM late))"
            )
            self._insert(self._record_sql(history))
        rebuilt = conn.execute("SELECT count(*) FROM fresh").fetchone()[0]
        conn.execute("DROP TABLE fresh")
        conn.execute("DROP TABLE merged")
        conn.execute("DROP TABLE late")
        return rebuilt

    def _insert(self, sql: str) -> int:
        return self.conn.execute(f"INSERT INTO {self.table} BY NAME {sql}").fetchone()[0]

    def _record_sql(self, source: str, extra: tuple[str, ...] = ()) -> str:
        fields = [FIELD_SQL.format(column=c, data_type=t) for c, t in self.columns.items()]
        return RECORD_SQL.format(
            source=source,
            struct="{" + ",".join(f'"{c}":"VARCHAR"' for c in self.columns) + "}",
            fields=",\n       ".join([*fields, *extra]),
        )


def _watermark(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute(
        "SELECT load_id FROM state_watermarks WHERE name = ?", [WATERMARK]
    ).fetchone()
    return row[0] if row else 0
