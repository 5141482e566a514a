"""The DuckDB writer held for a whole run (revorch/instance/writer.py).

Dagster claims a pool slot per step and gives a freed slot at once to another run's step that
waits, so a run of several writer steps waited behind the other live lane's steps between its
own. A run on ``writer_held_executor`` (launched, as the daemon does) or under
``in_process_instance`` (the approve command, the inbox) claims it once: a claim of lower
priority that waits gets the slot only after the run, one of higher priority between two steps.

Real instances (SQLite) with the project's dagster.yaml (the pool's limit 1); the jobs are two
tiny steps in the pool, so what is tested is the claiming, not the pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from revorch.instance import instance_config
from revorch.instance.recovery import process_claim_key, recover_abandoned_runs
from revorch.instance.writer import in_process_instance, writer_held_executor

OTHER = "other-run"
# What the steps saw, by name; set by the steps, read by the test (same process).
SEEN: dict[str, object] = {}


def _holders(instance) -> set[tuple[str, str]]:
    info = instance.event_log_storage.get_concurrency_info(DUCKDB_WRITER_POOL)
    return {(slot.run_id, slot.step_key) for slot in info.claimed_slots}


@dg.op(pool=DUCKDB_WRITER_POOL)
def first(context) -> int:
    # Another run asks for the writer while this run holds it, at the priority the test set.
    priority = int(os.environ["TEST_OTHER_PRIORITY"])
    status = context.instance.event_log_storage.claim_concurrency_slot(
        DUCKDB_WRITER_POOL, OTHER, "its_step", priority
    )
    assert not status.is_claimed
    return 1


@dg.op(pool=DUCKDB_WRITER_POOL)
def second(context, _: int) -> None:
    SEEN["holders in second"] = _holders(context.instance)
    SEEN["other served before second"] = SEEN.get("other served", False)


@dg.job(executor_def=writer_held_executor, tags={"dagster/priority": "5"})
def two_writer_steps():
    second(first())


def _other_run_served(instance, stop: threading.Event) -> threading.Thread:
    """The other run: once given the slot, note it and free it at once."""

    def serve() -> None:
        storage = instance.event_log_storage
        priority = int(os.environ["TEST_OTHER_PRIORITY"])
        while not stop.is_set():
            # As a waiting step does: ask again until the slot is given (Dagster assigns a
            # freed slot to the waiting claim of highest priority; it claims on its next ask).
            if (
                storage.has_pending_step(DUCKDB_WRITER_POOL, OTHER, "its_step")
                and (
                    storage.claim_concurrency_slot(DUCKDB_WRITER_POOL, OTHER, "its_step", priority)
                ).is_claimed
            ):
                SEEN["other served"] = True
                storage.free_concurrency_slot_for_step(OTHER, "its_step")
                return
            time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def instance_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_config(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    SEEN.clear()
    return home


def _launched(instance_home: Path):
    """The job as a launched run executes it: its own executor (not execute_in_process's)."""
    with dg.DagsterInstance.get() as instance:
        stop = threading.Event()
        serving = _other_run_served(instance, stop)
        result = dg.execute_job(dg.reconstructable(two_writer_steps), instance=instance)
        serving.join(timeout=60)
        stop.set()
        return result, instance


def _in_process(instance_home: Path):
    """The job as the approve command and the inbox run it (execute_in_process)."""
    with in_process_instance(two_writer_steps) as (instance, hold_writer):
        stop = threading.Event()
        serving = _other_run_served(instance, stop)
        run_id = str(uuid.uuid4())
        with hold_writer(run_id):
            result = two_writer_steps.execute_in_process(instance=instance, run_id=run_id)
        serving.join(timeout=60)
        stop.set()
        return result, instance


@pytest.mark.parametrize("execute", [_launched, _in_process], ids=["launched", "in_process"])
def test_a_lower_claim_waits_for_the_whole_run_not_the_next_step(
    instance_home, monkeypatch, execute
):
    monkeypatch.setenv("TEST_OTHER_PRIORITY", "0")  # a live_decide step, say
    result, _ = execute(instance_home)
    assert result.success
    # The second step ran with the run still holding the slot, the other run still waiting.
    assert SEEN["other served before second"] is False
    [(holder_run, holder_key)] = SEEN["holders in second"]
    assert holder_run == result.run_id and holder_key.startswith("whole_run")
    # And the other run got it when the run ended.
    assert SEEN["other served"] is True


def test_a_higher_claim_goes_between_two_steps_of_a_launched_run(instance_home, monkeypatch):
    monkeypatch.setenv("TEST_OTHER_PRIORITY", "10")  # a review or dispatch a person waits on
    result, instance = _launched(instance_home)
    assert result.success
    assert SEEN["other served before second"] is True
    [(holder_run, _)] = SEEN["holders in second"]
    assert holder_run == result.run_id
    assert _holders(instance) == set()  # nothing left claimed after the run


def test_recovery_keeps_a_living_commands_claim_and_frees_a_dead_ones(instance_home):
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(DUCKDB_WRITER_POOL)
        # This process claims the writer for a run it has not created yet (the approve command
        # between its claim and execute_in_process): recovery must not take it for a deleted
        # run's and free it.
        alive_run = str(uuid.uuid4())
        key = process_claim_key("whole_run")
        assert storage.claim_concurrency_slot(DUCKDB_WRITER_POOL, alive_run, key, 10).is_claimed
        assert recover_abandoned_runs(instance) == []
        assert _holders(instance) == {(alive_run, key)}
        storage.free_concurrency_slot_for_step(alive_run, key)

        # A command that died while holding it: its claim names a process that is gone.
        code = (
            "from revorch.instance.recovery import process_claim_key;"
            "print(process_claim_key('whole_run'))"
        )
        dead_key = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        dead_run = str(uuid.uuid4())
        assert storage.claim_concurrency_slot(DUCKDB_WRITER_POOL, dead_run, dead_key, 10).is_claimed
        [recovered] = recover_abandoned_runs(instance)
        assert recovered.run_id == dead_run
        assert _holders(instance) == set()


def test_the_inbox_is_not_busy_while_a_live_run_holds_the_writer_it_will_yield(
    instance_home, tmp_path, monkeypatch
):
    from revorch.server.inbox import writer_holder

    monkeypatch.setenv("REVORCH_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default(DUCKDB_WRITER_POOL)
        for job_name, priority, step_key in (
            ("live_ingest", "5", "whole_run"),  # held for its run, yields to a review
            ("live_decide", "0", "state_machines"),  # one step of a run that claims per step
            ("dispatch_actions", "10", "whole_run"),  # held, yields to nothing below 11
        ):
            run = instance.create_run_for_job(
                job_def=two_writer_steps,
                status=dg.DagsterRunStatus.STARTED,
                tags={"dagster/priority": priority, "job": job_name},
            )
            assert storage.claim_concurrency_slot(
                DUCKDB_WRITER_POOL, run.run_id, step_key, int(priority)
            ).is_claimed
            holder = writer_holder(wait_seconds=0.3)
            storage.free_concurrency_slot_for_step(run.run_id, step_key)
            if job_name == "live_ingest":
                assert holder is None, job_name
            else:
                assert holder and step_key in holder, (job_name, holder)


def test_two_steps_assigned_the_one_slot_cannot_both_claim_it(instance_home, monkeypatch):
    """Two steps assigned the writer's one slot at once (SQLite's assignment is not atomic: a
    slot freed while another step registers goes to two) claim it at the same moment, as two
    processes do: the second claims between the first's look for a free slot and its write.
    Only one may get it (Dagster's own SQLite claim gave it to both)."""
    import sqlalchemy

    first, second = (dg.DagsterInstance.get() for _ in range(2))  # as two processes' instances
    assert type(first.event_log_storage).__name__ == "AtomicClaimSqliteEventLogStorage"
    storage = first.event_log_storage
    storage.initialize_concurrency_limit_to_default(DUCKDB_WRITER_POOL)
    for run_id in ("run-a", "run-b"):
        storage.add_pending_step(DUCKDB_WRITER_POOL, run_id, "step", should_assign=True)

    others: list = []

    def the_other_claims_first(conn, cursor, statement, *_):
        # Just before this thread writes its claim, the other process claims in full.
        if (
            statement.lstrip().upper().startswith("UPDATE CONCURRENCY_SLOTS")
            and threading.current_thread() is threading.main_thread()
            and not others
        ):
            other = threading.Thread(
                target=lambda: others.append(
                    second.event_log_storage.claim_concurrency_slot(
                        DUCKDB_WRITER_POOL, "run-b", "step"
                    )
                )
            )
            other.start()
            other.join()

    sqlalchemy.event.listen(
        sqlalchemy.engine.Engine, "before_cursor_execute", the_other_claims_first
    )
    try:
        mine = storage.claim_concurrency_slot(DUCKDB_WRITER_POOL, "run-a", "step")
    finally:
        sqlalchemy.event.remove(
            sqlalchemy.engine.Engine, "before_cursor_execute", the_other_claims_first
        )
    assert len(others) == 1 and others[0].is_claimed  # the other's claim came first and won
    assert not mine.is_claimed
    assert _holders(first) == {("run-b", "step")}
    # Freed, the slot is the first run's at its next try.
    storage.free_concurrency_slot_for_step("run-b", "step")
    assert storage.claim_concurrency_slot(DUCKDB_WRITER_POOL, "run-a", "step").is_claimed
    assert _holders(first) == {("run-a", "step")}
    first.dispose()
    second.dispose()
