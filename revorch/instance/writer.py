"""Who holds the state store's writer, in words a person waiting for it can act on."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import dagster as dg

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
