"""Moving the state off the embedded file: every table and view of a state file into a
migrated DuckLake (``revorch lake import``, docs/deployment.md).

The copy is one transaction: the lake has all of the file or none of it. Only an empty lake
takes it (nothing but the rows a migration seeds), and only a file at the same migrations as
the lake, so that the tables line up column for column. The audit chain moves as it is: its
rows' hashes do not depend on where they are stored, so the anchors already written for the
file hold for the lake.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from revorch.state.backend import LAKE

# Tables the lake has of its own: its migrations' record and the write claims (DuckLake's
# stand-in for unique keys, revorch/state/backend.py); the file has no claims.
_OWN = "table_name = 'schema_migrations' OR starts_with(table_name, 'write_claims_')"
# Rows a migration seeds (0001_crm_state.sql): replaced by the file's, and no sign of state.
_SEEDED = {("main", "object_types")}


class MoveError(RuntimeError):
    """The file cannot go into this lake; nothing was copied."""


@dataclass
class Moved:
    tables: dict[str, int] = field(default_factory=dict)  # "schema.table" -> rows copied
    views: list[str] = field(default_factory=list)
    # The views it could not create, with why: the next run creates them again.
    views_left: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def import_file(conn: duckdb.DuckDBPyConnection, source: Path) -> Moved:
    """Copy the state file ``source`` into the lake ``conn`` is attached to (migrated, no
    state yet); what was copied. Raises :class:`MoveError`, having copied nothing, when the
    file is at other migrations than the lake or the lake already holds state."""
    with attached(conn, str(source)):
        _check_migrations(conn)
        held = [
            f"{schema}.{table}"
            for schema, table in _tables(conn, LAKE)
            if (schema, table) not in _SEEDED and _count(conn, LAKE, schema, table)
        ]
        if held:
            raise MoveError(
                f"the lake already holds state ({', '.join(held[:3])}"
                f"{', ...' if len(held) > 3 else ''}); import a file only into a new lake"
            )
        moved = copy_state(conn)
        for name, rows in moved.tables.items():
            schema, table = name.split(".", 1)
            if _count(conn, LAKE, schema, table) != rows:
                raise MoveError(f"{name}: the lake has another row count than the file")
        return moved


@contextmanager
def attached(conn: duckdb.DuckDBPyConnection, source: str) -> Iterator[None]:
    """``with attached(conn, source):`` the state store ``source`` (a file, or what ATTACH
    takes: ``ducklake:postgres:<catalog>``) read-only as ``seed`` beside the lake."""
    escaped = source.replace("'", "''")
    try:
        conn.execute(f"ATTACH '{escaped}' AS seed (READ_ONLY)")
    except duckdb.Error as error:  # not a DuckDB file, or a run holds it
        raise MoveError(f"cannot open it ({str(error).splitlines()[0]})") from error
    try:
        yield
    finally:
        conn.execute("DETACH seed")


def copy_state(conn: duckdb.DuckDBPyConnection) -> Moved:
    """Every table of ``seed`` (:class:`attached`) into the lake in one transaction, the
    lake's rows of a table it already has replaced; then its views, each once what it reads
    is there."""
    moved = Moved()
    in_lake = set(_tables(conn, LAKE)) | set(_views(conn, LAKE))
    # One commit for all the tables (each commit is a round trip to the catalog).
    conn.execute("BEGIN TRANSACTION")
    try:
        for schema, table in _tables(conn, "seed"):
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            source, target = f'seed."{schema}"."{table}"', f'"{schema}"."{table}"'
            if (schema, table) in in_lake:
                conn.execute(f"DELETE FROM {target}")
                conn.execute(f"INSERT INTO {target} SELECT * FROM {source}")
            else:
                conn.execute(f"CREATE TABLE {target} AS SELECT * FROM {source}")
            moved.tables[f"{schema}.{table}"] = _count(conn, "seed", schema, table)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    views = [
        (schema, view, sql)
        for schema, view, sql in conn.execute(
            "SELECT schema_name, view_name, sql FROM duckdb_views() "
            "WHERE database_name = 'seed' AND NOT internal"
        ).fetchall()
        if (schema, view) not in in_lake
    ]
    while views:  # a view over a view waits for it
        waiting, errors = [], {}
        for schema, view, sql in views:
            conn.execute(f"SET schema = '{schema}'")
            try:
                conn.execute(sql)
                moved.views.append(f"{schema}.{view}")
            except (duckdb.CatalogException, duckdb.BinderException) as error:
                waiting.append((schema, view, sql))
                errors[f"{schema}.{view}"] = str(error).splitlines()[0]
        conn.execute("SET schema = 'main'")
        if len(waiting) == len(views):
            moved.views_left = errors
            break
        views = waiting
    return moved


def _check_migrations(conn: duckdb.DuckDBPyConnection) -> None:
    def applied(database: str) -> dict[int, str]:
        return dict(
            conn.execute(
                f"SELECT version, checksum FROM {database}.main.schema_migrations"
            ).fetchall()
        )

    try:
        file = applied("seed")
    except duckdb.CatalogException as error:
        raise MoveError("not a Revorch state file (it has no schema_migrations)") from error
    lake = applied(LAKE)
    if file != lake:
        raise MoveError(
            f"the file is at migration {max(file, default=0)}, the lake at "
            f"{max(lake, default=0)}: run any revorch command on the file with this version "
            "(REVORCH_STATE_BACKEND=duckdb, for example `revorch ingest`) to migrate it first"
        )


def _tables(conn: duckdb.DuckDBPyConnection, database: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() "
        f"WHERE database_name = ? AND NOT ({_OWN}) ORDER BY ALL",
        [database],
    ).fetchall()


def _views(conn: duckdb.DuckDBPyConnection, database: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT schema_name, view_name FROM duckdb_views() "
        "WHERE database_name = ? AND NOT internal",
        [database],
    ).fetchall()


def _count(conn: duckdb.DuckDBPyConnection, database: str, schema: str, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM {database}."{schema}"."{table}"').fetchone()[0]
