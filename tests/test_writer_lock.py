"""One writer lock for the embedded state store: the Dagster resource and the MCP server's
writes queue on the same lock (revorch/state/writer_lock.py), and the MCP server gives up
after its bound instead of failing to open the file."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from resources import StateStore
from revorch.mcp.state import StateBusy, Store
from revorch.state.writer_lock import WriterBusy, writer_lock

ROOT = Path(__file__).resolve().parents[1]
WAIT_SECONDS = 600  # hang guard only: nothing here asserts a duration


def _mcp_store(tmp_path: Path, database: Path) -> Store:
    return Store(
        database=database,
        published=tmp_path / "published.duckdb",
        anchor=tmp_path / "anchor",
        busy_seconds=0.5,
    )


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "state.duckdb"
    with StateStore(database=str(path)).get_connection() as conn:
        conn.execute("CREATE TABLE written (who VARCHAR)")
    return path


def test_mcp_writes_wait_for_a_run_in_another_process_then_write(tmp_path, database):
    # A run's connection, held in another process until its stdin closes.
    run = (
        "import sys; from resources import StateStore\n"
        "with StateStore(database=sys.argv[1]).get_connection() as conn:\n"
        "    conn.execute(\"INSERT INTO written VALUES ('run')\"); print('holding', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", run, str(database)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    store = _mcp_store(tmp_path, database)
    try:
        assert holder.stdout.readline().strip() == "holding"
        # Busy, said in words, rather than DuckDB's "Could not set lock on file".
        with pytest.raises(StateBusy, match="nothing was done"), store.writer() as conn:
            conn.execute("INSERT INTO written VALUES ('mcp while held')")
        holder.stdin.close()
        assert holder.wait(WAIT_SECONDS) == 0
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(WAIT_SECONDS)
    with store.writer() as conn:
        conn.execute("INSERT INTO written VALUES ('mcp')")
        assert conn.execute("SELECT list(who ORDER BY who) FROM written").fetchone()[0] == [
            "mcp",
            "run",
        ]


def test_threads_of_one_process_take_the_writer_in_turn(tmp_path, database):
    store = _mcp_store(tmp_path, database)
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with StateStore(database=str(database)).get_connection():
            held.set()
            release.wait(WAIT_SECONDS)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        held.wait(WAIT_SECONDS)
        with pytest.raises(StateBusy), store.writer():
            pass
        with pytest.raises(WriterBusy), writer_lock(database, timeout=0):
            pass
    finally:
        release.set()
        thread.join(WAIT_SECONDS)
    # Reentrant in one thread: a connection opened inside another does not wait for itself.
    with writer_lock(database, timeout=0), store.writer() as conn:
        conn.execute("INSERT INTO written VALUES ('nested')")
