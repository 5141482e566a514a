"""Ctrl-C or SIGTERM stops long work within seconds whatever it is doing, says what was kept
and exits 130 or 143; the next ingest finishes the work, nothing lost or doubled."""

import os
import signal
import subprocess
import sys
import textwrap

import duckdb
import pytest

from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history

# A bound for a stuck test only: a stop waits for the step in flight, which on a busy machine
# took more than 60 s once (CI, 2026-12-02); the test asserts behaviour, not speed.
STUCK_SECONDS = 600


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    env.pop("OPENAI_API_KEY", None)
    return env


def _start(cwd, *args: str) -> subprocess.Popen:
    """A process in its own group, as a shell starts a command, so that the test can stop
    the group as a terminal's Ctrl-C does and clean it all up."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _stop_while_a_step_runs(cwd, signal_number: int) -> tuple[int, str, str]:
    """Start `revorch ingest --progress` and send the signal once a step has started (any
    step: which one it reaches depends on the machine). Exit code, stdout and stderr."""
    ingest = _start(cwd, sys.executable, "-m", "revorch.cli", "ingest", "--progress")
    try:
        seen = []
        for line in ingest.stdout:
            seen.append(line)
            if line.startswith("  step ") and line.rstrip().endswith(" started"):
                if signal_number == signal.SIGINT:
                    os.killpg(ingest.pid, signal_number)  # Ctrl-C reaches the whole group
                else:
                    ingest.send_signal(signal_number)
                break
        out, err = ingest.communicate(timeout=STUCK_SECONDS)
        return ingest.returncode, "".join(seen) + out, err
    finally:
        _kill_group(ingest)


def _change_log(cwd) -> tuple[int, int]:
    """Rows in the change log, and distinct event ids among them."""
    database = cwd / ".revorch" / "revorch.duckdb"
    if not database.exists():
        return 0, 0
    with duckdb.connect(str(database), read_only=True) as conn:
        exists = conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'change_log'"
        ).fetchone()[0]
        if not exists:
            return 0, 0
        return conn.execute("SELECT count(*), count(DISTINCT event_id) FROM change_log").fetchone()


def _said_what_was_kept(err: str, kept: int) -> bool:
    """Whether the stop said what it kept (and said it right), or, rarely, that it could not
    read it in time (revorch/cli.py, COMMITTED_READ_SECONDS)."""
    if "What this run committed could not be read" in err:
        return False
    if kept == 0:
        assert "Nothing was ingested" in err
    else:
        assert f"Committed: {kept:,} changes" in err
    return True


def _ingest_completes(cwd) -> subprocess.CompletedProcess:
    again = _start(cwd, sys.executable, "-m", "revorch.cli", "ingest")
    try:
        out, err = again.communicate(timeout=600)
    finally:
        _kill_group(again)
    assert again.returncode == 0, err
    return subprocess.CompletedProcess(again.args, again.returncode, out, err)


@pytest.mark.slow
def test_a_signal_stops_the_ingest_and_the_next_one_loads_everything(tmp_path):
    written = simulate_history(
        LandingZone(tmp_path / ".revorch" / "landing").ensure(),
        SimulationConfig(contacts=300, seed=7),
    ).events
    # Ctrl-C stops one ingest, SIGTERM the next; one ingest after both finishes the work (a
    # full run for both signals instead of one each).
    said = []
    for signal_number, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        before, _ = _change_log(tmp_path)
        exit_code, out, err = _stop_while_a_step_runs(tmp_path, signal_number)
        name = signal.Signals(signal_number).name
        assert exit_code == code, err
        assert f"revorch ingest: stopped by {name}" in err
        assert "This run (" not in out  # the summary of a finished run is not printed
        kept, distinct = _change_log(tmp_path)
        assert kept == distinct
        said.append(_said_what_was_kept(err, kept - before))  # what this run committed
    assert any(said), "neither stop could read what it had committed"

    again = _ingest_completes(tmp_path)
    assert "step " not in again.stdout  # progress lines only on a terminal or when asked
    assert _change_log(tmp_path) == (written, written)  # nothing lost, nothing doubled


# A stand-in for a step stuck in one long DuckDB query: Python would run the signal handler
# only when the query returned, hours later.
LONG_QUERY = textwrap.dedent(
    """
    import sys, duckdb
    from revorch.stopping import interruptible, stop_on_signal

    # A stop that had to wait for the grace period would exit without "ended cleanly".
    with stop_on_signal(on_timeout=lambda n: print("gave up", flush=True)) as stop:
        conn = duckdb.connect()
        try:
            with interruptible(conn):
                print("query started", flush=True)
                conn.execute("SELECT sum(hash(range)) FROM range(10000000000000)").fetchall()
            print("the query ended by itself", flush=True)
        except (KeyboardInterrupt, duckdb.InterruptException, RuntimeError) as stopped:
            print("interrupted:", type(stopped).__name__, flush=True)
        finally:
            conn.close()  # waits for a query still running: it must have been cancelled
    print("ended cleanly", flush=True)
    sys.exit(stop.exit_code if stop else 0)
    """
)

# A stand-in for work that ignores interrupts: the grace period ends it.
DEAF_WORK = textwrap.dedent(
    """
    import sys, time
    from revorch.stopping import stop_on_signal

    with stop_on_signal(grace_seconds=1, on_timeout=lambda n: print("gave up", flush=True)):
        announced = False
        while True:
            try:
                if not announced:  # said inside the try, so the signal always finds it
                    print("working", flush=True)
                    announced = True
                time.sleep(0.05)
            except KeyboardInterrupt:
                pass
    """
)


@pytest.mark.parametrize(
    ("script", "said"),
    [(LONG_QUERY, "ended cleanly"), (DEAF_WORK, "gave up")],
    ids=["duckdb-query", "deaf-work"],
)
def test_a_stop_ends_work_that_would_not_hear_the_signal(tmp_path, script, said):
    work = _start(tmp_path, sys.executable, "-c", script)
    try:
        assert work.stdout.readline() in ("query started\n", "working\n")
        os.killpg(work.pid, signal.SIGINT)
        out, err = work.communicate(timeout=STUCK_SECONDS)
    finally:
        _kill_group(work)
    assert said in out, err
    assert "ended by itself" not in out
    if script is LONG_QUERY:
        assert "interrupted:" in out and "gave up" not in out
    assert work.returncode == 130


def test_simulate_shows_a_progress_bar_only_when_asked(tmp_path):
    def simulate(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "revorch.cli", "simulate", "--contacts", "300", *flags],
            cwd=tmp_path,
            env={**_env(), "CI": "true"},
            capture_output=True,
            text=True,
            timeout=300,
        )

    shown = simulate("--progress")
    assert shown.returncode == 0, shown.stderr
    assert "Simulating 300 contacts" in shown.stdout
    assert "Writing batches: 100%" in shown.stderr and "1/1" in shown.stderr
    quiet = simulate()  # a pipe, under CI=true
    assert quiet.returncode == 0, quiet.stderr
    assert "Writing batches" not in quiet.stderr and "Simulating" not in quiet.stdout


def test_a_stop_that_cannot_read_what_it_kept_says_so_in_time(monkeypatch):
    """When the state store cannot be opened again in the stopped process (DuckDB waiting for
    the interrupted step's instance), the read gives up after its bound instead of hanging."""
    import threading
    import time

    from revorch import cli

    stuck = threading.Event()

    def never_returns(run_id):
        stuck.set()
        time.sleep(3600)

    monkeypatch.setattr(cli, "_read_committed", never_returns)
    monkeypatch.setattr(cli, "COMMITTED_READ_SECONDS", 0.5)
    assert cli._committed_by("run-1") is None
    assert stuck.is_set()
    monkeypatch.setattr(cli, "_read_committed", lambda run_id: (3, 120))
    assert cli._committed_by("run-1") == (3, 120)

    def fails(run_id):
        raise ValueError("no such table")

    monkeypatch.setattr(cli, "_read_committed", fails)
    with pytest.raises(ValueError, match="no such table"):
        cli._committed_by("run-1")
