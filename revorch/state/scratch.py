"""Scratch files of one step, beside DuckDB's own spill files rather than in /tmp."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb


@contextmanager
def scratch_folder(conn: duckdb.DuckDBPyConnection, prefix: str) -> Iterator[Path]:
    """A new folder in the connection's ``temp_directory`` (``<database>.tmp`` in
    REVORCH_HOME; ``<data_path>.tmp`` on DuckLake), removed with what it holds when the block
    ends; in the system's temp folder where the temp directory is relative (an in-memory
    database's default)."""
    spill = Path(conn.execute("SELECT current_setting('temp_directory')").fetchone()[0] or ".")
    spill = spill if spill.is_absolute() else None
    if spill:
        spill.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=spill) as folder:
        yield Path(folder)


def path_literal(path: Path | str) -> str:
    """``path`` as a SQL string literal, for COPY ... TO and read_parquet of scratch files."""
    return "'" + str(path).replace("'", "''") + "'"
