"""Where the state lives: the embedded DuckDB file (the default) or DuckLake.

DuckLake keeps the tables as Parquet files under a data path and their catalog in
PostgreSQL, so several processes, on several machines, write at once and analysts read the
same catalog live. Its extensions (``ducklake`` and ``postgres_scanner``) are loaded by path
from the PyPI wheels ``duckdb-extension-ducklake`` and ``duckdb-extension-postgres-scanner``,
whose version must equal DuckDB's: nothing is downloaded at run time (docs/deployment.md).

DuckLake has no primary keys or unique constraints, and concurrent inserts into one table
both commit. Writes whose correctness needs them serialized (the change log's de-duplication,
the audit chain's next link) claim a row (:func:`claim`): two transactions that claim the
same name conflict at commit, the later one aborts and :func:`retry_conflicts` runs it again
on the newer snapshot.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import duckdb

Backend = Literal["duckdb", "ducklake"]
BACKENDS: tuple[str, ...] = ("duckdb", "ducklake")

# The name the lake is attached under; every connection then `USE`s it, so SQL written for
# the embedded file (unqualified tables, the stages/agents/governance schemas) runs as is.
LAKE = "revorch_lake"

# No extension is ever installed or loaded implicitly: only the pinned wheels' files.
OFFLINE_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}

# The PyPI package (import name) and file of each extension DuckLake on PostgreSQL needs.
# `postgres_scanner` is the extension's real name: the file of `duckdb-extension-postgres`
# has the same bytes under another name, and DuckDB refuses it (wrong entry point).
EXTENSIONS = {
    "postgres_scanner": "duckdb_extension_postgres_scanner",
    "ducklake": "duckdb_extension_ducklake",
}

log = logging.getLogger(__name__)

T = TypeVar("T")


class BackendError(RuntimeError):
    pass


def extension_path(name: str) -> Path:
    """The extension's file inside its installed wheel, for the DuckDB version in use."""
    package = EXTENSIONS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            f"the DuckDB extension {name} is not installed: pip install "
            f"{package.replace('_', '-')}=={duckdb.__version__}"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        found = sorted(p.name for p in (root / "extensions").glob("v*"))
        raise BackendError(
            f"{package} has no build for DuckDB {duckdb.__version__} (it has {found}); "
            "its version must equal duckdb's"
        )
    return path


def load_extensions(conn: duckdb.DuckDBPyConnection) -> None:
    for name in EXTENSIONS:
        conn.execute(f"LOAD '{extension_path(name)}'")


def attach_lake(
    conn: duckdb.DuckDBPyConnection, catalog_dsn: str, data_path: str, *, read_only: bool = False
) -> None:
    """Attach the DuckLake whose catalog is the PostgreSQL database ``catalog_dsn`` (a libpq
    connection string) and whose files are under ``data_path``, and make it the default."""
    load_extensions(conn)
    data = data_path.rstrip("/") + "/"
    if "://" not in data and not read_only:
        Path(data).mkdir(parents=True, exist_ok=True)
    options = f"DATA_PATH {_literal(data)}" + (", READ_ONLY" if read_only else "")
    conn.execute(f"ATTACH {_literal('ducklake:postgres:' + catalog_dsn)} AS {LAKE} ({options})")
    conn.execute(f"USE {LAKE}")


_lakes: dict[tuple[int, str, str, bool], duckdb.DuckDBPyConnection] = {}
_lakes_guard = threading.Lock()


def lake_connection(
    catalog_dsn: str, data_path: str, config: dict[str, object], *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """A new connection to this process's DuckDB instance that has the lake attached
    (``read_only``: attached read-only, for readers that must not write).

    Loading the extensions and attaching the catalog costs about a second, so each process
    does it once and hands out cursors: each is its own connection, with its own
    transactions (DuckLake detects conflicts between them as between processes).

    DuckDB spills beside a local data folder, in ``<data_path>.tmp`` (as the file spills in
    ``<database>.tmp``): an in-memory DuckDB's own default is ``.tmp`` in whatever folder
    the command started in (a 10M first run left 7.2 GB there). For remote data, the
    caller's ``temp_directory`` or DuckDB's default."""
    key = (os.getpid(), catalog_dsn, data_path, read_only)
    spill = {} if "://" in data_path else {"temp_directory": data_path.rstrip("/") + ".tmp"}
    with _lakes_guard:
        root = _lakes.get(key)
        if root is None:
            root = duckdb.connect(":memory:", config=spill | config | OFFLINE_CONFIG)
            attach_lake(root, catalog_dsn, data_path, read_only=read_only)
            _lakes[key] = root
    conn = root.cursor()
    conn.execute(f"USE {LAKE}")
    return conn


def is_lake(conn: duckdb.DuckDBPyConnection) -> bool:
    return (
        conn.execute(
            "SELECT count(*) FROM duckdb_databases() WHERE database_name = ? AND type = 'ducklake'",
            [LAKE],
        ).fetchone()[0]
        > 0
    )


def lake_snapshot(conn: duckdb.DuckDBPyConnection) -> int:
    """The lake's newest snapshot id: ``SELECT ... FROM t AT (VERSION => id)`` reads the
    tables as they were then (what an agent saw, for a replay)."""
    return conn.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()[0]


def claim(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    """Inside a transaction: make it conflict with any concurrent one that claims ``name``.

    On DuckLake two transactions that change the same table conflict at commit; on the
    embedded file the writer lock already serializes writers and this costs one row update.
    """
    conn.execute(f"UPDATE write_claims_{name} SET claims = claims + 1")


def is_conflict(error: BaseException) -> bool:
    """A commit refused because a concurrent transaction changed what this one did."""
    return isinstance(error, duckdb.TransactionException | duckdb.Error) and (
        "conflict" in str(error).lower()
    )


def retry_conflicts(work: Callable[[], T], *, attempts: int = 20, first_wait: float = 0.05) -> T:
    """Run ``work`` (one whole transaction, rolled back on error) again while its commit
    conflicts with a concurrent one; each try reads the newer snapshot."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except duckdb.Error as error:
            if not is_conflict(error) or attempt == attempts:
                raise
            wait = first_wait * 1.5 ** (attempt - 1) * (0.5 + random.random())
            log.info("state store: write conflicted with a concurrent one; try %d", attempt + 1)
            time.sleep(min(wait, 2.0))
    raise AssertionError("unreachable")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
