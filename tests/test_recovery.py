"""A run whose process dies (kill -9, out of memory, a reboot) blocks nothing after it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.events import EngineEventData

from revorch.instance import instance_config
from revorch.instance.recovery import (
    HOST_TAG,
    PID_TAG,
    PROCESS_TAG,
    in_process_run_tags,
    recover_abandoned_runs,
)
from sensors.recovery import abandoned_runs_sensor

POOL = "duckdb_writer"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    return {**env, "REVORCH_HOME": str(home)}


def _revorch(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # The timeout only guards against a hang; it is not a claim about speed.
    return subprocess.run(
        [sys.executable, "-m", "revorch.cli", *args],
        cwd=home.parent,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _instance(home: Path) -> dg.DagsterInstance:
    """The project's Dagster instance under ``home``, as `revorch` sets it up."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(instance_config(dagster_home))
    return dg.DagsterInstance.from_config(str(dagster_home))


def _slot_holders(instance: dg.DagsterInstance) -> set[str]:
    info = instance.event_log_storage.get_concurrency_info(POOL)
    return {s.run_id for s in info.claimed_slots} | {s.run_id for s in info.pending_steps}


def _wait_for_claimed_slot(instance: dg.DagsterInstance, process: subprocess.Popen) -> str:
    while process.poll() is None:
        claimed = instance.event_log_storage.get_concurrency_info(POOL).claimed_slots
        if claimed:
            return claimed[0].run_id
        time.sleep(0.05)
    pytest.fail(f"revorch ingest ended before it claimed a slot: {process.stderr.read()}")


def test_a_run_killed_holding_the_writer_slot_is_recovered_by_the_next_run(tmp_path):
    home = tmp_path / ".revorch"
    assert _revorch("simulate", "--contacts", "200", home=home).returncode == 0
    batches = {
        path.name.removesuffix(".ndjson"): len(path.read_bytes().splitlines())
        for path in (home / "landing" / "incoming").glob("*.ndjson")
    }
    assert batches

    with _instance(home) as instance:
        ingest = subprocess.Popen(
            [sys.executable, "-m", "revorch.cli", "ingest"],
            cwd=tmp_path,
            env=_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            killed_run = _wait_for_claimed_slot(instance, ingest)
        finally:
            os.kill(ingest.pid, signal.SIGKILL)
            ingest.wait()
        # What the issue found: the dead run still holds the only slot and looks alive.
        assert killed_run in _slot_holders(instance)
        assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.STARTED

        again = _revorch("ingest", home=home)
        assert again.returncode == 0, again.stderr
        assert (
            f"Recovered run {killed_run[:8]} (process {ingest.pid} is gone): "
            f"marked failed, freed 1 {POOL} slot"
        ) in again.stdout.splitlines()
        assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.FAILURE
        assert _slot_holders(instance) == set()
        [survivor] = [
            r
            for r in instance.get_runs()
            if r.run_id != killed_run and r.tags.get(PID_TAG) and r.job_name == "revorch_main"
        ]
        assert survivor.status == dg.DagsterRunStatus.SUCCESS

    # DuckDB replayed its WAL; every landed line is in the change log exactly once, as after
    # a clean ingest (the simulation has no malformed or repeated lines).
    with duckdb.connect(str(home / "revorch.duckdb"), read_only=True) as conn:
        rows, events = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM change_log"
        ).fetchone()
        loaded = dict(
            conn.execute(
                "SELECT batch_id, sum(loaded) FROM landing_batches GROUP BY batch_id"
            ).fetchall()
        )
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        contacts = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
    assert rows == events == sum(batches.values())
    assert loaded == batches
    assert quarantined == 0
    assert contacts > 0
    assert list((home / "landing" / "incoming").glob("*.ndjson")) == []


def _started_run(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun:
    run = instance.create_run_for_job(dg.GraphDefinition("revorch_main").to_job(), tags=tags)
    instance.handle_run_event(
        run.run_id,
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name),
    )
    return instance.get_run_by_id(run.run_id)


def _daemon_launched_run(instance: dg.DagsterInstance, pid: int) -> dg.DagsterRun:
    """A run as the default run launcher starts it: its worker logs its own pid."""
    run = _started_run(instance, {".dagster/grpc_info": '{"host": "localhost", "port": 4266}'})
    instance.report_engine_event(
        f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
    )
    return run


def _gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_sensor_fails_runs_whose_process_is_gone_and_frees_their_slots(tmp_path):
    with _instance(tmp_path / ".revorch") as instance:
        gone_pid = _gone_pid()
        dead_worker = _daemon_launched_run(instance, gone_pid)
        # This test's process started before the event: it is the worker, still running.
        live_worker = _daemon_launched_run(instance, os.getpid())
        # A live process with the run's pid but another start: the pid was reused.
        reused_pid = _started_run(
            instance, {**in_process_run_tags(), PROCESS_TAG: "another-boot/123"}
        )
        live_cli = _started_run(instance, in_process_run_tags())
        other_host = _started_run(instance, {HOST_TAG: "elsewhere", PID_TAG: str(gone_pid)})
        ended = _started_run(instance, {})
        storage = instance.event_log_storage
        # Two slots: the dead worker and the ended run hold one each; the others wait.
        storage.set_concurrency_slots(POOL, 2)
        for run in (dead_worker, ended, live_worker, reused_pid, live_cli, other_host):
            storage.claim_concurrency_slot(POOL, run.run_id, "crm_change_log")
        instance.report_run_failed(ended, "failed, but its worker never released the slot")

        result = abandoned_runs_sensor(dg.build_sensor_context(instance=instance))

        assert sorted(result.skip_message.split("; ")) == sorted(
            [
                f"Recovered run {dead_worker.run_id[:8]} (process {gone_pid} is gone): "
                f"marked failed, freed 1 {POOL} slot",
                f"Recovered run {reused_pid.run_id[:8]} (process {os.getpid()} is gone): "
                "marked failed",
                f"Recovered run {ended.run_id[:8]} (already failed): freed 1 {POOL} slot",
            ]
        )
        status = {r.run_id: r.status for r in instance.get_runs()}
        assert status[dead_worker.run_id] == dg.DagsterRunStatus.FAILURE
        assert status[reused_pid.run_id] == dg.DagsterRunStatus.FAILURE
        for untouched in (live_worker, live_cli, other_host):
            assert status[untouched.run_id] == dg.DagsterRunStatus.STARTED
        holders = _slot_holders(instance)
        assert dead_worker.run_id not in holders
        assert ended.run_id not in holders

        # Nothing is left to recover; the live runs are still left alone.
        assert recover_abandoned_runs(instance) == []
