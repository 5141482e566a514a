"""A query's result as text for another program: CSV, JSON or a Markdown table.

The values are DuckDB's and the writers polars': JSON keeps numbers, lists and structs as JSON
(decimals as strings, so no precision is lost); CSV and Markdown, which have no nested values,
show lists, structs and maps as DuckDB prints them (``[1, 2]``, ``{'x': 1}``).
"""

from __future__ import annotations

import duckdb
import polars as pl

_NESTED = {"list", "struct", "map", "array", "union"}


def render(relation: duckdb.DuckDBPyRelation, format: str) -> str:
    """The whole result of ``relation`` in ``format`` (not ``box``: DuckDB's ``show`` prints it)."""
    if format == "json":
        return relation.pl().write_json()
    if format == "csv":
        return _as_text(relation, only_nested=True).pl().write_csv()
    if format == "markdown":
        return _markdown(_as_text(relation, only_nested=False).pl())
    raise ValueError(f"unknown format {format!r}; one of csv, json, markdown")


def _as_text(relation: duckdb.DuckDBPyRelation, *, only_nested: bool) -> duckdb.DuckDBPyRelation:
    """The same columns, the nested ones (or all) cast to text. Columns are taken by position
    (``#1``), so a result with two columns of the same name keeps both."""
    columns = []
    described = zip(relation.columns, relation.types, strict=True)
    for position, (name, kind) in enumerate(described, start=1):
        quoted = '"' + name.replace('"', '""') + '"'
        if only_nested and kind.id not in _NESTED:
            columns.append(f"#{position} AS {quoted}")
        else:
            columns.append(f"CAST(#{position} AS VARCHAR) AS {quoted}")
    return relation.project(", ".join(columns))


def _markdown(frame: pl.DataFrame) -> str:
    # A '|' inside a value would end its cell; an empty cell reads better than "null".
    frame = frame.with_columns(pl.all().str.replace_all("|", r"\|", literal=True).fill_null(""))
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=2**15,
        tbl_width_chars=2**15,  # polars refuses widths above 65,535
    ):
        return str(frame)
