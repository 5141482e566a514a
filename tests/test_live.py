"""Under a live stream, with `dagster dev` running: one writer at a time, analysts never blocked.

`dagster dev` (webserver, daemon, the landing-zone sensor) runs on a fresh REVORCH_HOME with
the project's dagster.yaml; the simulator lands 3 live batches 1.5 s apart on a small seed.
Meanwhile an analyst thread queries the published copy in a loop. The test asserts that:

- every batch is in the published copy's ``landing_batches`` within 300 s of landing (fails if
  the sensor stops requesting runs, or runs stop succeeding);
- the sensor never requested a run of a lane while another run of that lane was in flight;
- no revorch_main run failed, and no run's event log mentions a DuckDB lock conflict;
- no two steps of the ``duckdb_writer`` pool ever ran at the same time in different runs. To
  make runs meet, a revorch_main run is also launched by hand (GraphQL launchRun) as the first
  batch lands, beside the sensor's live_ingest and live_decide runs; the instance allows 4 runs
  at once. Without the pool limit the runs' writer steps overlap (checked: the test then
  fails), whether or not the resource's connection retries hide the lock errors;
- the analyst thread never got an error, ran queries throughout, and saw new batches appear.

It uses bench/latency.py's helpers (loaded from the file: bench/ is not a package). The
waits end on conditions (batches published, runs settled); the timeouts only guard a hang.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs settle when their work is done, however long a busy machine takes; the generous
# timeout only guards a hang.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _load_bench():
    name = "revorch_bench_latency"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


latency = _load_bench()

BATCHES = 3
INTERVAL_S = 1.5
EVENTS_PER_BATCH = 100
SEED_CONTACTS = 300
# A hang guard: a batch not published by then never will be (seconds when the machine is idle).
VISIBLE_WITHIN_S = 300


class AnalystReader(threading.Thread):
    """Queries the published copy the way an analyst does, in a loop, until stopped."""

    QUERIES = (
        "SELECT lifecycle_stage, count(*) FROM contacts GROUP BY 1 ORDER BY 2 DESC",
        "SELECT stage, count(*), sum(amount) FROM deals GROUP BY 1",
        "SELECT count(*) FROM change_log",
    )

    def __init__(self, path: Path) -> None:
        super().__init__(name="analyst-reader", daemon=True)
        self.path = path
        self.queries = 0
        self.errors: list[str] = []
        self.batch_counts: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with duckdb.connect(str(self.path), read_only=True) as conn:
                    for query in self.QUERIES:
                        conn.execute(query).fetchall()
                        self.queries += 1
                    (count,) = conn.execute("SELECT count(*) FROM landing_batches").fetchone()
                    self.queries += 1
                    self.batch_counts.append(count)
            except Exception as error:
                self.errors.append(f"{type(error).__name__}: {error}")
            self._halt.wait(0.05)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def _log_tail(dev, lines: int = 60) -> str:
    log = dev.log_dir / "dagster_dev.log"
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.file_only(
    "the file's one writer (crm_change_log in the duckdb_writer pool) and the published copy "
    "analysts read; on DuckLake ingestions leave the pool and analysts read the catalog live"
)
def test_live_stream_keeps_one_writer_and_readers_unblocked(tmp_path):
    env = latency.prepare_home(tmp_path / "revorch")
    published = latency.published_path(env)
    seed_ids = latency.seed_history(env, SEED_CONTACTS)
    dev = latency.DagsterDev(env, tmp_path / "logs")
    reader = AnalystReader(published)
    manual_runs: list[str] = []
    try:
        dev.start()
        dev.wait_ready(timeout=240)
        latency.wait_for_batches(published, seed_ids, timeout=300)

        reader.start()
        result = latency.stream_and_measure(
            env,
            batches=BATCHES,
            interval=INTERVAL_S,
            events_per_batch=EVENTS_PER_BATCH,
            timeout=VISIBLE_WITHIN_S,
            contacts=SEED_CONTACTS,
            # Load: besides the sensor's two lanes, an operator launches revorch_main by hand
            # as the first batch lands, so three runs want the writer together.
            on_batch=lambda _: manual_runs or manual_runs.append(latency.launch_run(dev.port)),
        )
        time.sleep(0.5)  # a few more reads of the final copy
        reader.stop()

        run_list = latency.wait_runs_settled(dev.port, timeout=1500)
        lock_runs = latency.runs_with_lock_errors(dev.port, run_list)
        writers = latency.writer_steps(dev.port)
        overlaps = latency.overlapping_writer_steps(run_list, writers)
        tail = _log_tail(dev)
    finally:
        reader.stop()
        dev.stop()

    statuses = Counter(run["status"] for run in run_list)
    context = f"runs by status: {dict(statuses)}\n--- dagster dev log (tail) ---\n{tail}"

    assert len(result.landed) == BATCHES
    assert len(manual_runs) == 1
    # The seed was loaded by a run the sensor requested; during the stream the sensor asked
    # for no run of a lane (live_ingest, live_decide) while another run of that lane was
    # queued or running, so runs did not pile up behind the stream.
    requested = latency.sensor_runs(run_list)
    assert {run["jobName"] for run in requested} >= {"live_ingest"}, context
    piled = [
        (run["runId"][:8], other["runId"][:8])
        for run in requested
        for other in requested
        if other["jobName"] == run["jobName"]
        and other["creationTime"] < run["creationTime"]
        and (other["endTime"] or float("inf")) > run["creationTime"]
    ]
    assert not piled, f"sensor runs requested while another of its lane ran: {piled}\n{context}"
    assert not result.missed, (
        f"not published within {VISIBLE_WITHIN_S} s: {result.missed}\n{context}"
    )
    assert set(statuses) == {"SUCCESS"}, context
    assert not lock_runs, f"runs with DuckDB lock errors: {lock_runs}\n{context}"

    assert writers, "no asset is in the duckdb_writer pool"
    assert "crm_change_log" in writers
    assert not overlaps, f"writer steps of different runs overlapped: {overlaps[:5]}"

    assert not reader.errors, (
        f"the analyst reader failed {len(reader.errors)} times: {reader.errors[:3]}"
    )
    assert reader.queries > 50, reader.queries
    # It read fresh copies as they were published, not one stale file.
    assert reader.batch_counts[-1] > reader.batch_counts[0], reader.batch_counts[::20]
    assert reader.batch_counts[-1] == len(seed_ids) + BATCHES
