"""Versioned schema migrations for the DuckDB state store.

Migrations are the numbered ``.sql`` files beside this module (``0001_name.sql``). Each is
applied once, in order, inside a transaction, and recorded in ``schema_migrations`` with its
checksum. Applying them again does nothing; editing a migration that was already applied is
an error (write a new one instead).

On DuckLake (revorch/state/backend.py), which has no primary keys or unique constraints,
those constraints are left out when a migration is applied (its checksum is of the file as
written); the writers keep the uniqueness (delete and insert in one transaction, claims).
Two processes migrating at once conflict on DuckLake; the later one retries and finds the
migration applied. Within one process the lake's connections are cursors of one DuckDB
instance, which share its catalog: there a half-applied migration (a macro created, the
view that calls it not yet) is visible to the other cursors' binders, so one process
migrates through one connection at a time.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from revorch.state.backend import is_lake, retry_conflicts

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# `, PRIMARY KEY (a, b)` at the end of a table, or `PRIMARY KEY` after a column's type.
_KEYS = re.compile(r",\s*PRIMARY KEY\s*\([^)]*\)|\s+PRIMARY KEY\b", re.IGNORECASE)
_one_at_a_time = threading.Lock()


def without_keys(sql: str) -> str:
    """The migration for a catalog without primary keys (DuckLake)."""
    return _KEYS.sub("", sql)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def available_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} must be named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version number: {versions}")
    return migrations


def migrate(conn: duckdb.DuckDBPyConnection, folder: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now."""
    with _one_at_a_time:
        return _migrate(conn, folder)


def _migrate(conn: duckdb.DuckDBPyConnection, folder: Path) -> list[int]:
    lake = is_lake(conn)
    ddl = without_keys if lake else (lambda sql: sql)
    retry_conflicts(
        lambda: _in_transaction(
            conn,
            ddl(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version INTEGER PRIMARY KEY,
                    name VARCHAR NOT NULL,
                    checksum VARCHAR NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """
            ),
        )
    )
    applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    done = []
    for migration in available_migrations(folder):
        if migration.version in applied:
            _check_unchanged(migration, applied[migration.version])
        elif retry_conflicts(lambda m=migration: _apply(conn, m, ddl(m.sql))):
            done.append(migration.version)
    return done


def _check_unchanged(migration: Migration, checksum: str) -> None:
    if checksum != migration.checksum:
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} was edited after it "
            "was applied; add a new migration instead"
        )


def _apply(conn: duckdb.DuckDBPyConnection, migration: Migration, sql: str) -> bool:
    """Apply one migration unless it is recorded; True if this call applied it."""
    conn.execute("BEGIN TRANSACTION")
    try:
        applied = conn.execute(
            "SELECT checksum FROM schema_migrations WHERE version = ?", [migration.version]
        ).fetchone()
        if applied is not None:  # by a concurrent process, since we looked
            _check_unchanged(migration, applied[0])
            conn.execute("COMMIT")
            return False
        conn.execute(sql)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (?, ?, ?)",
            [migration.version, migration.name, migration.checksum],
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return True


def _in_transaction(conn: duckdb.DuckDBPyConnection, sql: str) -> None:
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if a failed COMMIT has not already ended it."""
    try:
        conn.execute("ROLLBACK")
    except duckdb.TransactionException as error:
        if "no transaction is active" not in str(error).lower():
            raise
