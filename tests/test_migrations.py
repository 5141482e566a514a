from __future__ import annotations

import duckdb
import pytest

from revorch.state.migrate import MigrationError, available_migrations, migrate

CRM_TABLES = {"owners", "companies", "contacts", "deals", "activities", "tickets", "subscriptions"}


def test_migrations_create_the_crm_schema(conn):
    tables = {
        row[0]
        for row in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert CRM_TABLES | {"change_log", "quarantine", "landing_batches"} <= tables
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()]
    assert versions == [m.version for m in available_migrations()]


def test_migrating_again_applies_nothing_and_keeps_data(conn):
    conn.execute("INSERT INTO owners (id, email) VALUES ('own-1', 'a@example.com')")
    assert migrate(conn) == []
    assert conn.execute("SELECT count(*) FROM owners").fetchone()[0] == 1


def test_an_edited_migration_is_refused(tmp_path, db_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_first.sql").write_text("CREATE TABLE t (a INTEGER);")
    connection = duckdb.connect(str(db_path))
    assert migrate(connection, folder) == [1]
    (folder / "0002_second.sql").write_text("ALTER TABLE t ADD COLUMN b INTEGER;")
    assert migrate(connection, folder) == [2]
    (folder / "0001_first.sql").write_text("CREATE TABLE t (a BIGINT);")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(connection, folder)


def test_a_failing_migration_leaves_no_trace(tmp_path, db_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_bad.sql").write_text("CREATE TABLE t (a INTEGER); SELECT * FROM missing;")
    connection = duckdb.connect(str(db_path))
    with pytest.raises(duckdb.Error):
        migrate(connection, folder)
    tables = {
        r[0]
        for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert "t" not in tables
    assert connection.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0
