"""The state store's DuckDB memory cap: set on every connection a run opens, from the machine
or REVORCH_DUCKDB_MEMORY_LIMIT, and a query larger than the cap spills to the temp directory
beside the file instead of failing."""

from __future__ import annotations

from pathlib import Path

from resources import StateStore
from revorch import settings


def _limit(conn) -> str:
    return conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_the_cap_is_a_quarter_of_the_machine_or_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("REVORCH_DUCKDB_MEMORY_LIMIT", raising=False)
    with StateStore(database=str(tmp_path / "state.duckdb")).get_connection() as conn:
        default = _limit(conn)
    machine = settings.duckdb_memory_limit()
    assert machine.endswith("MiB") and int(machine[:-3]) >= 1024
    monkeypatch.setenv("REVORCH_DUCKDB_MEMORY_LIMIT", "300MB")
    with StateStore(database=str(tmp_path / "state.duckdb")).get_connection() as conn:
        assert _limit(conn) == "286.1 MiB"  # DuckDB shows 300 MB in MiB
    assert default != "286.1 MiB"


def test_a_query_larger_than_the_cap_spills_beside_the_file(tmp_path: Path):
    database = tmp_path / "state.duckdb"
    with StateStore(database=str(database), memory_limit="32MB").get_connection() as conn:
        assert _limit(conn) == "30.5 MiB"
        assert conn.execute("SELECT current_setting('temp_directory')").fetchone()[0] == (
            f"{database}.tmp"
        )
        # About 50 MB of distinct keys to group: more than the cap, so it finishes only by
        # spilling (without a temp directory DuckDB stops with an out-of-memory error).
        groups = conn.execute(
            "SELECT count(*), max(n) FROM (SELECT t, count(*) AS n FROM "
            "(SELECT md5(i::VARCHAR) || repeat('x', 40) AS t FROM range(600000) AS r(i)) "
            "GROUP BY t)"
        ).fetchone()
    assert groups == (600_000, 1)
