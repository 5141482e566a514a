"""Run the SQL files that sit beside the assets owning them."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

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


def run_sql_file(conn: duckdb.DuckDBPyConnection, path: Path, parameters: dict) -> None:
    conn.execute(render(path.read_text(), parameters))
