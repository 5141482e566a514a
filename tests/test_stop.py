"""Ctrl-C or SIGTERM during `revorch ingest` stops the run, says what was kept, and the next
ingest finishes the work."""

import os
import signal
import subprocess
import sys

import duckdb
import pytest

from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    env.pop("OPENAI_API_KEY", None)
    return env


def _stop_once_ingesting(cwd, signal_number: int) -> tuple[int, list[str], str]:
    """Start `revorch ingest --progress`, send the signal when the ingestion step has started
    (read from its output), and return its exit code, stdout lines and stderr."""
    ingest = subprocess.Popen(
        [sys.executable, "-m", "revorch.cli", "ingest", "--progress"],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in ingest.stdout:
        seen.append(line.rstrip("\n"))
        if line.startswith("  step crm_change_log started"):
            ingest.send_signal(signal_number)
            break
    out, err = ingest.communicate(timeout=300)
    return ingest.returncode, seen + out.splitlines(), err


def _change_log_rows(cwd) -> int:
    database = cwd / ".revorch" / "revorch.duckdb"
    with duckdb.connect(str(database), read_only=True) as conn:
        exists = conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'change_log'"
        ).fetchone()[0]
        return conn.execute("SELECT count(*) FROM change_log").fetchone()[0] if exists else 0


def _said_what_was_kept(err: str, kept: int) -> None:
    if "Nothing was ingested" in err:
        assert kept == 0
    else:
        assert f"Committed: {kept:,} changes" in err


@pytest.mark.slow
def test_ctrl_c_stops_the_ingest_and_the_next_one_loads_everything(tmp_path):
    written = simulate_history(
        LandingZone(tmp_path / ".revorch" / "landing").ensure(),
        SimulationConfig(contacts=3_000, seed=7),
    ).events
    code, out, err = _stop_once_ingesting(tmp_path, signal.SIGINT)
    assert code == 130, err
    assert "revorch ingest: stopped by SIGINT in step crm_change_log." in err
    _said_what_was_kept(err, _change_log_rows(tmp_path))
    assert not any(line.startswith("This run") for line in out)  # no success summary

    again = subprocess.run(
        [sys.executable, "-m", "revorch.cli", "ingest"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr
    assert "step " not in again.stdout  # progress lines only on a terminal or when asked
    assert _change_log_rows(tmp_path) == written


@pytest.mark.slow
def test_sigterm_stops_the_ingest_like_ctrl_c(tmp_path):
    simulate_history(
        LandingZone(tmp_path / ".revorch" / "landing").ensure(),
        SimulationConfig(contacts=3_000, seed=7),
    )
    code, _, err = _stop_once_ingesting(tmp_path, signal.SIGTERM)
    assert code == 143, err
    assert "revorch ingest: stopped by SIGTERM in step crm_change_log." in err
    _said_what_was_kept(err, _change_log_rows(tmp_path))


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
