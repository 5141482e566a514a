"""The DuckLake state backend: a PostgreSQL catalog (started by .ci/run, or by the
``postgres_dsn`` fixture), Parquet files in a folder, extensions from the pinned wheels."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import duckdb
import pytest

from conftest import event
from resources.state_store import StateStore
from revorch.governance.audit import AuditEvent, audited, verify
from revorch.governance.dispatch import dispatch
from revorch.governance.policy import load_policy
from revorch.governance.targets import OutboxFile
from revorch.ingestion.change_log import ingest_pending
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history
from revorch.state import backend
from revorch.state.migrate import available_migrations
from revorch.state.scratch import scratch_folder


def test_extensions_load_from_the_pinned_wheels_without_downloading():
    # Each wheel is built for exactly one DuckDB: its version is DuckDB's.
    for name, package in backend.EXTENSIONS.items():
        assert metadata.version(package) == duckdb.__version__
        assert f"v{duckdb.__version__}" in str(backend.extension_path(name))
    conn = duckdb.connect(":memory:", config=backend.OFFLINE_CONFIG)
    settings = dict(
        conn.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('autoinstall_known_extensions', 'autoload_known_extensions')"
        ).fetchall()
    )
    assert settings == {
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
    }
    backend.load_extensions(conn)
    loaded = {
        row[0]
        for row in conn.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE loaded"
        ).fetchall()
    }
    assert {"ducklake", "postgres_scanner"} <= loaded


def test_migrations_apply_once_on_ducklake_even_from_writers_starting_together(
    postgres_database: str, tmp_path: Path
):
    # An empty catalog (not ``lake_store``, a clone of a migrated lake): the writers migrate it.
    lake_store = StateStore(
        database=":memory:",
        backend="ducklake",
        catalog_dsn=postgres_database,
        data_path=str(tmp_path / "lake"),
    )
    errors: list[BaseException] = []

    def open_and_migrate() -> None:
        try:
            with lake_store.get_connection() as conn:
                conn.execute("SELECT count(*) FROM change_log").fetchone()
        except BaseException as error:  # reported below, with the thread's failure
            errors.append(error)

    threads = [threading.Thread(target=open_and_migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with lake_store.get_connection() as conn:
        versions = [
            v
            for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
        ]
        assert versions == [m.version for m in available_migrations()]
        kind = conn.execute(
            "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()[0]
    assert kind == "ducklake"


def test_a_lake_connection_spills_beside_its_data_folder_not_where_the_command_started(
    lake_store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """DuckDB's spill folder on DuckLake is ``<data_path>.tmp``, as the file's is
    ``<database>.tmp``: an in-memory DuckDB's default, ``.tmp`` in the working directory,
    put a 10M run's spill files wherever the command was started."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with lake_store.get_connection() as conn:
        spill = conn.execute("SELECT current_setting('temp_directory')").fetchone()[0]
        with scratch_folder(conn, "revorch-test-") as folder:
            assert folder.parent == Path(lake_store.data_path + ".tmp")
    assert Path(spill) == Path(lake_store.data_path + ".tmp")
    assert not (elsewhere / ".tmp").exists()


@pytest.fixture(params=["duckdb", "ducklake"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    """The state store on each backend: the embedded file, and DuckLake on PostgreSQL."""
    if request.param == "duckdb":
        return StateStore(database=str(tmp_path / "revorch.duckdb"), clock="data")
    return request.getfixturevalue("lake_store")


def _land(zone: LandingZone, name: str, events: list[dict]) -> None:
    zone.write_events("test", events, batch_id=f"test-{name}")


def test_a_batch_delivered_twice_is_ingested_once_on_both_backends(
    store: StateStore, zone: LandingZone
):
    first = [
        event(f"e{i}", "contact", f"c{i}", "2026-01-01T00:00:00Z", email=f"{i}@x") for i in range(5)
    ]
    _land(zone, "b1", first)
    with store.get_connection() as conn:
        assert ingest_pending(conn, zone).loaded == 5
    # The same events again and a new one, in a later batch.
    _land(zone, "b2", [*first, event("e9", "contact", "c9", "2026-01-02T00:00:00Z")])
    with store.get_connection() as conn:
        result = ingest_pending(conn, zone)
        assert (result.loaded, result.duplicates) == (1, 5)
        ids = [i for (i,) in conn.execute("SELECT event_id FROM change_log ORDER BY 1").fetchall()]
    assert ids == ["e0", "e1", "e2", "e3", "e4", "e9"]


def test_snapshots_answer_as_of_queries(lake_store: StateStore, zone: LandingZone):
    _land(zone, "b1", [event("e1", "contact", "c1", "2026-01-01T00:00:00Z")])
    with lake_store.get_connection() as conn:
        ingest_pending(conn, zone)
        before = backend.lake_snapshot(conn)
    _land(zone, "b2", [event("e2", "contact", "c2", "2026-01-02T00:00:00Z")])
    with lake_store.get_connection() as conn:
        ingest_pending(conn, zone)
        then = conn.execute(f"SELECT count(*) FROM change_log AT (VERSION => {before})").fetchone()
        now = conn.execute("SELECT count(*) FROM change_log").fetchone()
    assert (then[0], now[0]) == (1, 2)


def _seed_outbox(lake: StateStore, governed_db: Path) -> int:
    """Copy the shared CRM's dispatched actions into the lake as ready to send again."""
    with lake.get_connection() as conn:
        conn.execute(f"ATTACH '{governed_db}' AS governed (READ_ONLY)")
        try:
            conn.execute(
                "INSERT INTO governance.actions SELECT * REPLACE ("
                "CASE WHEN status = 'sent' THEN 'ready' ELSE status END AS status, "
                "0 AS attempts, NULL AS sent_at, NULL AS target) "
                "FROM governed.governance.actions WHERE status IN ('sent', 'ready', 'approved')"
            )
            return conn.execute(
                "SELECT count(*) FROM governance.actions WHERE status IN ('ready', 'approved')"
            ).fetchone()[0]
        finally:
            conn.execute("DETACH governed")


@pytest.mark.slow
def test_two_ingestions_and_the_dispatcher_write_at_once_on_ducklake(
    lake_store: StateStore, simulated_crm, tmp_path: Path
):
    """Three writers at the same time, each with its own connections and transactions, no
    writer lock: two ingestions taking the same batches (the harshest overlap) and the
    dispatcher sending the outbox. No error, every event once, every action sent once."""
    # The CRM's file only (not copy_crm: with --state-backend ducklake it would fill this lake).
    governed = simulated_crm.copy("governed", tmp_path / "crm", into_lake=False)
    ready = _seed_outbox(lake_store, governed.database)
    assert ready > 0
    zone = LandingZone(tmp_path / "landing").ensure()
    summary = simulate_history(zone, SimulationConfig(contacts=200, seed=11, batch_size=200))
    outbox = tmp_path / "outbox" / "actions.jsonl"
    anchor = tmp_path / "audit" / "anchors.jsonl"
    policy = load_policy()
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def ingest() -> None:
        start.wait()
        while zone.pending():
            with lake_store.get_connection() as conn:
                ingest_pending(conn, zone, run_id=threading.current_thread().name, max_batches=3)

    def send() -> None:
        start.wait()
        dispatch(
            lake_store.get_connection,
            policy,
            OutboxFile(outbox),
            journal_path=tmp_path / "outbox" / "journal.sqlite3",
            run_id="dispatcher",
            anchor_path=anchor,
            # The data clock has no changes to read yet when the dispatcher starts.
            now=datetime.now(UTC),
        )

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as error:  # asserted empty below
                errors.append(error)

        return run

    threads = [
        threading.Thread(target=guarded(ingest), name="ingest-a"),
        threading.Thread(target=guarded(ingest), name="ingest-b"),
        threading.Thread(target=guarded(send), name="dispatch"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    assert summary.batches > 3 and not zone.pending()

    with lake_store.get_connection() as conn:
        logged = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM change_log"
        ).fetchone()
        assert logged == (summary.events, summary.events)
        assert conn.execute("SELECT sum(loaded) FROM landing_batches").fetchone()[0] == logged[0]
        # Every batch was recorded by one of the two ingestions; which one wins each race is up
        # to the scheduler (the loser finds the winner's events as duplicates).
        runs = {
            r for (r,) in conn.execute("SELECT DISTINCT run_id FROM landing_batches").fetchall()
        }
        assert runs and runs <= {"ingest-a", "ingest-b"}
        sent = conn.execute(
            "SELECT count(*) FROM governance.actions WHERE status = 'sent'"
        ).fetchone()[0]
        trail = verify(conn, anchor)
    lines = [json.loads(line)["action_id"] for line in outbox.read_text().splitlines()]
    assert sent > 0 and len(lines) == len(set(lines)) == sent
    assert trail.problems == [] and trail.intact


def test_two_audited_writes_at_once_never_fork_the_chain(lake_store: StateStore, tmp_path: Path):
    """Both read the chain's head, then both commit: the later one conflicts and rolls back
    whole instead of linking a second row to the same head."""
    anchor = tmp_path / "anchors.jsonl"
    with lake_store.get_connection() as a, lake_store.get_connection() as b:
        first, second = (
            audited(a, run_id="a", anchor_path=anchor),
            audited(b, run_id="b", anchor_path=anchor),
        )
        for conn, trail in ((a, first.__enter__()), (b, second.__enter__())):
            conn.execute("SELECT count(*) FROM governance.audit_log").fetchone()
            trail.append(AuditEvent("approved", "human:test", {"by": "test"}))
        first.__exit__(None, None, None)
        with pytest.raises(duckdb.TransactionException, match="onflict"):
            second.__exit__(None, None, None)
        rows = a.execute("SELECT run_id FROM governance.audit_log").fetchall()
        trail = verify(a, anchor)
    assert rows == [("a",)]
    assert trail.problems == [] and trail.intact
