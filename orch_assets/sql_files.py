"""Run the SQL files that sit beside the assets owning them."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from revorch.lifecycle.keyed_tables import sql_hash, store_hash, stored_hash

_PARAMETER = re.compile(r"\$([a-z_]+)")


def sql_literal(value: object) -> str:
    """A configuration value as a SQL literal (numbers, strings and lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a SQL literal")


def render(sql: str, parameters: dict[str, object]) -> str:
    """Replace each ``$name`` by its value. Views cannot hold bound parameters, so the
    thresholds from the config are written into the SQL, as literals."""

    def value(match: re.Match) -> str:
        name = match[1]
        if name not in parameters:
            raise KeyError(f"SQL needs ${name}, which the config does not provide")
        return sql_literal(parameters[name])

    return _PARAMETER.sub(value, sql)


_VIEW = re.compile(r"CREATE OR REPLACE VIEW\s+([\w.]+)", re.IGNORECASE)


def run_sql_file(conn: duckdb.DuckDBPyConnection, path: Path, parameters: dict) -> None:
    """Run the file; a file that only (re)creates a view is skipped when the view exists and
    its SQL, as rendered, is the one that made it (a hash is kept in stages.sql_versions)."""
    sql = render(path.read_text(), parameters)
    views = _VIEW.findall(sql)
    if len(views) != 1 or sql.upper().count("CREATE ") != 1:
        conn.execute(sql)
        return
    [view] = views
    version = sql_hash(sql)
    exists = conn.execute(
        "SELECT count(*) FROM duckdb_views() WHERE schema_name || '.' || view_name = ?", [view]
    ).fetchone()[0]
    if exists and stored_hash(conn, view) == version:
        return
    conn.execute(sql)
    store_hash(conn, view, version)
