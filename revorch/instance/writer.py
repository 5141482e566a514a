"""Who holds the state store's writer, in words a person waiting for it can act on."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import dagster as dg
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.in_process import InProcessExecutor

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL


def pool_holder(instance: dg.DagsterInstance, *, besides: str | None = None) -> str | None:
    """The run step holding the ``duckdb_writer`` pool (other than run ``besides``), if any."""
    for slot in instance.event_log_storage.get_concurrency_info(DUCKDB_WRITER_POOL).claimed_slots:
        if slot.run_id == besides:
            continue
        run = instance.get_run_by_id(slot.run_id)
        job = run.job_name if run else "a run"
        return f"run {slot.run_id[:8]} ({job}) is in step {slot.step_key}"
    return None


def held_for_whole_run(instance: dg.DagsterInstance, *, below: int) -> bool:
    """Whether a launched run of priority lower than ``below`` holds the writer for its whole
    run (:data:`writer_held_executor`): a claim at ``below`` gets it at that run's next step
    boundary, without waiting for the run."""
    for slot in instance.event_log_storage.get_concurrency_info(DUCKDB_WRITER_POOL).claimed_slots:
        run = instance.get_run_by_id(slot.run_id) if slot.step_key == WHOLE_RUN else None
        if run and int(run.tags.get("dagster/priority", "0") or 0) < below:
            return True
    return False


@contextlib.contextmanager
def say_while_waiting(
    instance: dg.DagsterInstance,
    run_id: str,
    say: Callable[[str], None],
    *,
    poll_seconds: float = 0.5,
) -> Iterator[None]:
    """While run ``run_id`` (executing in this process) has started no step and another run
    holds the writer, ``say`` who holds it, once per holder; then say how long it waited.
    A person who runs a short command is told why it is not done yet, not left in silence."""
    stop = threading.Event()
    started = time.monotonic()
    told: list[str] = []

    def step_started() -> bool:
        return bool(
            instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.STEP_START, limit=1
            ).records
        )

    def watch() -> None:
        while not stop.wait(poll_seconds):
            if step_started():
                if told:
                    say(f"took the DuckDB writer after {time.monotonic() - started:.1f} s")
                return
            holder = pool_holder(instance, besides=run_id)
            if holder and holder not in told:
                told.append(holder)
                say(
                    f"waiting for the DuckDB writer: {holder}; it is free again when that "
                    "step ends (reviews and dispatch go before the live runs' next steps)"
                )

    watcher = threading.Thread(target=watch, name="writer-wait", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


WRITER_HELD = "writer_held_in_process"
# The pseudo step under which a run holds the writer from its first step to its end.
WHOLE_RUN = "whole_run"


class WriterClaim:
    """One claim of the ``duckdb_writer`` slot for a run, under one step key, held across its
    steps (see :func:`holding_writer`)."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        priority: int = 0,
        *,
        step_key: str = WHOLE_RUN,
        poll_seconds: float = 0.2,
    ) -> None:
        self.storage = instance.event_log_storage
        self.run_id, self.priority, self.step_key = run_id, priority, step_key
        self.poll_seconds = poll_seconds

    def acquire(self) -> None:
        """Wait until the slot is this run's: as a step claim does, the highest priority
        waiting first, but checked every ``poll_seconds`` (Dagster backs off from 1 to 15 s)."""
        if DUCKDB_WRITER_POOL not in {pool.name for pool in self.storage.get_pool_limits()}:
            self.storage.initialize_concurrency_limit_to_default(DUCKDB_WRITER_POOL)
        while not self.storage.claim_concurrency_slot(
            DUCKDB_WRITER_POOL, self.run_id, self.step_key, self.priority
        ).is_claimed:
            time.sleep(self.poll_seconds)

    def release(self) -> None:
        """Free the slot (it goes at once to the highest claim waiting), or drop the claim of a
        run stopped while it waited."""
        self.storage.free_concurrency_slot_for_step(self.run_id, self.step_key)

    def yield_to_higher(self) -> bool:
        """Between two steps: if a claim of higher priority waits (a review or a dispatch a
        person waits on), let it go first, then take the slot back; whether it did."""
        waiting = self.storage.get_concurrency_info(DUCKDB_WRITER_POOL).pending_steps
        if not any(
            (step.priority or 0) > self.priority and step.run_id != self.run_id for step in waiting
        ):
            return False
        self.release()
        self.acquire()
        return True


@contextlib.contextmanager
def holding_writer(
    instance: dg.DagsterInstance,
    run_id: str,
    priority: int = 0,
    *,
    step_key: str = WHOLE_RUN,
    poll_seconds: float = 0.2,
) -> Iterator[WriterClaim]:
    """Claim the ``duckdb_writer`` slot for run ``run_id`` once and hold it until exit.

    Dagster claims a pool slot per step and frees it when the step ends; a freed slot goes at
    once to a step of another run that already waits (``assign_pending_steps``), so a run of
    n writer steps waits behind up to n steps of the live lanes. Claimed once, under the step
    key ``whole_run``, at ``priority`` like any step claim (the highest waiting goes first),
    the run's steps follow each other without a hand-over. Slots left by a run that died are
    freed by run id as before (revorch/instance/recovery.py, run monitoring)."""
    claim = WriterClaim(instance, run_id, priority, step_key=step_key, poll_seconds=poll_seconds)
    try:
        claim.acquire()
        yield claim
    finally:
        claim.release()


def holding_writer_in_process(instance: dg.DagsterInstance, run_id: str, priority: int = 0):
    """:func:`holding_writer` for a run this process starts with ``execute_in_process`` once
    it holds the writer: the claim names this process, so recovery does not free it as a
    deleted run's before the run exists (revorch/instance/recovery.py)."""
    from revorch.instance.recovery import process_claim_key

    return holding_writer(instance, run_id, priority, step_key=process_claim_key(WHOLE_RUN))


def whole_run_instance(home: str) -> dg.DagsterInstance:
    """The instance at ``home`` for a run this process executes under :func:`holding_writer`:
    its steps take no pool slot of their own (pool granularity ``run``; Dagster's
    ``InstanceConcurrencyContext.claim`` then grants every step at once), since the run
    holds the only one. Only for ``execute_in_process``, which always uses the in-process
    executor; launched runs get the same from :data:`writer_held_executor`."""
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    config, _ = dagster_instance_config(home)
    concurrency = dict(config.get("concurrency") or {})
    concurrency["pools"] = {**(concurrency.get("pools") or {}), "granularity": "run"}
    return dg.DagsterInstance.from_ref(
        InstanceRef.from_dir(home, overrides={"concurrency": concurrency})
    )


def _writer_held_iterator(job_context, execution_plan) -> Iterator[dg.DagsterEvent]:
    """Dagster's in-process step loop (``inprocess_execution_iterator``) inside one claim of
    the writer for the whole run, and no claim per step."""
    from dagster._core.errors import raise_execution_interrupts
    from dagster._core.events import EngineEventData
    from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator

    run = job_context.dagster_run
    steps = execution_plan.get_steps_to_execute_in_topo_order()
    if not any(step.pool == DUCKDB_WRITER_POOL for step in steps):
        yield from inner_plan_execution_iterator(job_context, execution_plan, None)
        return
    try:
        priority = int(run.tags.get("dagster/priority", "0"))
    except ValueError:
        priority = 0
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        with raise_execution_interrupts():  # a run cancelled while it waits stops waiting
            claim = stack.enter_context(holding_writer(job_context.instance, run.run_id, priority))
        yield dg.DagsterEvent.engine_event(
            job_context,
            f"Holding the {DUCKDB_WRITER_POOL} slot for the whole run (waited "
            f"{time.monotonic() - started:.1f} s); it goes first to a run of higher priority "
            "that waits between two steps",
            EngineEventData(),
        )
        left = len(steps)
        for event in inner_plan_execution_iterator(job_context, execution_plan, None):
            yield event
            if event.is_step_success or event.is_step_failure or event.is_step_skipped:
                left -= 1
                if left > 0:
                    with raise_execution_interrupts():
                        claim.yield_to_higher()


class _WriterHeldExecutor(InProcessExecutor):
    def execute(self, plan_context, execution_plan) -> Iterator[dg.DagsterEvent]:
        # InProcessExecutor.execute with the step loop above.
        from dagster._core.execution.api import ExecuteRunWithPlanIterable
        from dagster._core.execution.context_creation_job import PlanExecutionContextManager

        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=_writer_held_iterator,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
                step_dependency_config=self.step_dependency_config,
            ),
        )


@dg.executor(name=WRITER_HELD)
def writer_held_executor(_init_context) -> dg.Executor:
    """Dagster's in-process executor, with the DuckDB writer claimed once for the whole run
    (:func:`holding_writer`) instead of once per step: for short runs a person or a landed
    batch waits on (the ingestion lane, reviews and dispatch)."""
    return _WriterHeldExecutor(retries=RetryMode.ENABLED)


@contextlib.contextmanager
def in_process_instance(job: dg.JobDefinition):
    """The project's instance for a run of ``job`` this process executes (``execute_in_process``,
    which always uses Dagster's own in-process executor), and a context manager factory
    ``hold(run_id)`` to enter before the run: for a job whose executor holds the writer for the
    whole run when launched (:data:`writer_held_executor`), the same here; else a no-op (the
    steps claim the writer one by one)."""
    from revorch import settings

    if job.executor_def.name != WRITER_HELD:
        with dg.DagsterInstance.get() as instance:
            yield instance, lambda _run_id: contextlib.nullcontext()
        return
    try:
        priority = int(job.tags.get("dagster/priority", "0"))
    except ValueError:
        priority = 0
    with whole_run_instance(str(settings.dagster_home())) as instance:
        yield instance, lambda run_id: holding_writer_in_process(instance, run_id, priority)
