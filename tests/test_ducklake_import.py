"""Moving off the embedded file: `revorch lake import` copies a state file into a new DuckLake
whole, and what the file guaranteed holds there (docs/deployment.md, "Moving a file's state
onto DuckLake"). Against a real PostgreSQL catalog (``migrated_lake``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import CrmHome, Lake, event
from resources.state_store import StateStore
from revorch.ingestion.change_log import ingest_pending
from revorch.state.backend import lake_connection

REVORCH = str(Path(sys.executable).with_name("revorch"))
# What a team's state is made of, compared row for row between the file and the lake.
COMPARED = (
    "change_log",
    "contacts",
    "landing_batches",
    "stages.entity_stages",
    "stages.stage_transitions",
    "agents.decisions",
    "governance.actions",
    "governance.audit_log",
)


@pytest.fixture
def moving(simulated_crm, migrated_lake: Lake, tmp_path, monkeypatch) -> CrmHome:
    """The shared CRM after governance on its file, and the environment naming a new lake."""
    for name in list(os.environ):
        if name.startswith(("REVORCH_", "DAGSTER_")):
            monkeypatch.delenv(name)
    home = simulated_crm.copy("governed", tmp_path / "crm", into_lake=False)
    monkeypatch.setenv("REVORCH_HOME", str(home.root))
    monkeypatch.setenv("DAGSTER_HOME", str(home.root / "dagster"))
    monkeypatch.setenv("REVORCH_STATE_BACKEND", "ducklake")
    monkeypatch.setenv("REVORCH_DUCKLAKE_CATALOG", migrated_lake.catalog)
    monkeypatch.setenv("REVORCH_DUCKLAKE_DATA", str(migrated_lake.data))
    return home


def _revorch(*args: str, backend: str = "ducklake") -> subprocess.CompletedProcess:
    environment = {**os.environ, "REVORCH_STATE_BACKEND": backend}
    return subprocess.run(
        [REVORCH, *args], capture_output=True, text=True, env=environment, timeout=600
    )


def _lake(lake: Lake) -> duckdb.DuckDBPyConnection:
    conn = lake_connection(lake.catalog, str(lake.data), {}, read_only=True)
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def _rows(conn: duckdb.DuckDBPyConnection, table: str) -> list[tuple]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


def test_a_state_file_moves_into_a_new_lake_whole_and_once(moving: CrmHome, migrated_lake: Lake):
    imported = _revorch("lake", "import")
    assert imported.returncode == 0, imported.stderr
    assert "The audit trail is intact in the lake" in imported.stdout
    with (
        duckdb.connect(str(moving.database), read_only=True) as file,
        _lake(migrated_lake) as lake,
    ):
        file.execute("SET TimeZone = 'UTC'")
        for table in COMPARED:
            rows = _rows(file, table)
            assert rows, f"{table}: nothing to compare"
            assert _rows(lake, table) == rows, table
        # Every table of the file, with its row count.
        tables = file.execute(
            "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
            "WHERE table_name <> 'schema_migrations' AND NOT starts_with(table_name, 'write_claims_')"
        ).fetchall()
        for schema, table, _ in tables:
            name = f'"{schema}"."{table}"'
            counted = f"SELECT count(*) FROM {name}"
            assert lake.execute(counted).fetchone() == file.execute(counted).fetchone(), name
        copied = f"{len(tables)} tables, "
        assert copied in imported.stdout, imported.stdout
        # What the analysts' funnel shows, the same.
        funnel = "SELECT * FROM metrics.funnel_conversion ORDER BY ALL"
        assert lake.execute(funnel).fetchall() == file.execute(funnel).fetchall()
        audit_rows = lake.execute("SELECT count(*) FROM governance.audit_log").fetchone()[0]

    # The commands read the lake now, and the audit trail checks there as it did on the file:
    # the same rows, head and anchors (the anchors file written for the file holds for it).
    on_file = _revorch("audit", "verify", backend="duckdb")
    on_lake = _revorch("audit", "verify")
    assert f"{audit_rows:,} audit rows" in on_lake.stdout
    assert (on_lake.returncode, on_lake.stdout) == (on_file.returncode, on_file.stdout)

    # A second import finds the lake holding state and copies nothing: no row twice.
    again = _revorch("lake", "import")
    assert again.returncode == 2
    assert "already holds state" in again.stderr and "nothing was copied" in again.stderr
    with _lake(migrated_lake) as lake:
        assert lake.execute("SELECT count(*) FROM governance.audit_log").fetchone()[0] == audit_rows


def test_ingestion_on_the_lake_knows_every_event_the_file_had(moving: CrmHome, migrated_lake):
    """Exactly once across the move: a batch the file ingested, delivered again after the
    move, is all duplicates on the lake; a new event in it is loaded once."""
    assert _revorch("lake", "import").returncode == 0
    archived = sorted((moving.landing.archive_dir).glob("*.ndjson"))[-1]
    lines = archived.read_text().splitlines()
    new = event("moved-1", "contact", "c-moved-1", "2026-11-30T10:00:00Z", email="m@x.example")
    moving.landing.write_lines("moved", [*lines, json.dumps(new)])
    store = StateStore.configured(moving.database)
    with store.get_connection() as conn:
        result = ingest_pending(conn, moving.landing)
        assert (result.received, result.duplicates, result.loaded) == (
            len(lines) + 1,
            len(lines),
            1,
        )
        assert conn.execute(
            "SELECT count(*) FROM change_log WHERE event_id = 'moved-1'"
        ).fetchone() == (1,)


def test_a_file_it_cannot_take_is_refused_and_nothing_is_copied(
    moving: CrmHome, migrated_lake: Lake, tmp_path
):
    # Another version's file: its migrations are not the lake's.
    older = tmp_path / "older.duckdb"
    shutil.copyfile(moving.database, older)
    with duckdb.connect(str(older)) as conn:
        conn.execute(
            "DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)"
        )
    refused = _revorch("lake", "import", str(older))
    assert refused.returncode == 2
    assert "migrat" in refused.stderr and "nothing was copied" in refused.stderr
    # Not a DuckDB file.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    refused = _revorch("lake", "import", str(notes))
    assert refused.returncode == 2 and "cannot open it" in refused.stderr
    # No such file; the state still on the file.
    assert "no state file" in _revorch("lake", "import", str(tmp_path / "none.duckdb")).stderr
    wrong = _revorch("lake", "import", backend="duckdb")
    assert wrong.returncode == 2 and "REVORCH_STATE_BACKEND=ducklake" in wrong.stderr
    with _lake(migrated_lake) as lake:
        assert lake.execute("SELECT count(*) FROM change_log").fetchone() == (0,)
        assert lake.execute("SELECT count(*) FROM governance.audit_log").fetchone() == (0,)
