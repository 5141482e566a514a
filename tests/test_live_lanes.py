"""Live mode keeps up: one run per lane, batches claimed once, people never wait on a run.

- The two lanes together run exactly what revorch_main runs: nothing it leaves to a schedule
  (the daily model fit and backtest, the weekly report) runs with every batch.
- The landing sensor, on a real Dagster instance, requests a live_ingest run when batches wait
  and nothing while one is queued or running; a live_decide run once per successful ingestion,
  never two at once.
- Two processes ingesting the same landing zone while batches keep landing: every batch is
  claimed by exactly one run.
- A review waiting for the DuckDB writer says which run holds it, and takes it as soon as that
  step ends.
- While a live_ingest run works through its steps, an approval is applied and dispatched
  before that run ends (reviews and dispatch take the writer between its steps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from conftest import event, read_state
from orch_assets.agents.assets import OFFLINE_MODELS
from orch_assets.agents.backtest import MODEL_BACKTEST
from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from orch_assets.ingestion.jobs import LANE_TAG, PUBLISHED, live_decide, live_ingest
from orch_assets.reports.assets import WEEKLY_REPORT
from resources import LandingZoneResource
from revorch.definitions import defs
from revorch.instance import instance_config
from revorch.instance.writer import say_while_waiting
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, stream_live
from revorch.state import access
from sensors.landing_zone import landing_zone_sensor

REPO = Path(__file__).resolve().parent.parent


def _project_instance(tmp_path: Path):
    """A real instance with the project's dagster.yaml (the duckdb_writer pool limited to 1)."""
    import yaml

    (tmp_path / "dagster").mkdir()
    return dg.instance_for_test(
        overrides=yaml.safe_load(instance_config(tmp_path / "dagster")),
        temp_dir=str(tmp_path / "dagster"),
    )


def _evaluate(instance, zone: LandingZone, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"landing_zone": LandingZoneResource(path=str(zone.root))},
    )
    result = landing_zone_sensor(context)
    requests = result.run_requests or []
    return {r.job_name: r for r in requests}, result.cursor


def _run(instance, job, status: dg.DagsterRunStatus) -> str:
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def(job.name), status=status, tags=dict(job.tags)
    ).run_id


def _land(zone: LandingZone, n: int) -> None:
    for i in range(n):
        zone.write_events("sim", [event(f"e{time.time_ns()}-{i}", "contact", "c1", "2026-01-01")])


def _runs(job_name: str) -> set:
    """The assets and checks a run of this job materializes or evaluates."""
    graph = defs.resolve_job_def(job_name).asset_layer.asset_graph
    return set(graph.executable_asset_keys) | set(graph.asset_check_keys)


def test_the_two_lanes_run_exactly_what_revorch_main_runs():
    main, ingest, decide = _runs("revorch_main"), _runs("live_ingest"), _runs("live_decide")
    assert ingest | decide == main
    # Nothing runs in both; the analysts' copy is published by the decide lane (after every
    # ingestion), not in the ingestion run, so the next batch's ingestion need not wait for it.
    assert ingest & decide == set()
    assert PUBLISHED in decide
    for daily in (OFFLINE_MODELS, MODEL_BACKTEST, WEEKLY_REPORT):
        assert daily not in main | ingest | decide, daily
    assert dg.AssetKey(["agents", "lead_qualification"]) in decide
    assert dg.AssetKey(["stages", "expansion"]) in ingest


def test_the_sensor_keeps_one_ingestion_in_flight_and_one_decision_after_each(tmp_path):
    zone = LandingZone(tmp_path / "landing").ensure()
    with dg.instance_for_test() as instance:
        requests, cursor = _evaluate(instance, zone)
        assert requests == {}, "nothing waits, nothing decided: no run"

        _land(zone, 2)
        requests, cursor = _evaluate(instance, zone, cursor)
        assert set(requests) == {"live_ingest"}
        again, cursor = _evaluate(instance, zone, cursor)
        # The same waiting batches, the same run key: Dagster launches one run for them.
        assert again["live_ingest"].run_key == requests["live_ingest"].run_key
        # The job carries its lane, so in-flight queries and the instance's run-tag limit see it.
        assert live_ingest.tags[LANE_TAG] == "ingest"

        # While a live_ingest run waits or runs, more batches land: no new request, at any state.
        for status in (
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
            dg.DagsterRunStatus.CANCELING,
        ):
            run_id = _run(instance, live_ingest, status)
            _land(zone, 1)
            requests, cursor = _evaluate(instance, zone, cursor)
            assert requests == {}, status
            instance.delete_run(run_id)

        # The ingestion succeeded: one decide run follows; evaluating again asks for none.
        _run(instance, live_ingest, dg.DagsterRunStatus.SUCCESS)
        for batch in zone.pending():
            zone.archive(batch)
        requests, cursor = _evaluate(instance, zone, cursor)
        assert set(requests) == {"live_decide"}
        requests, cursor = _evaluate(instance, zone, cursor)
        assert requests == {}

        # Another ingestion succeeds while a decide run is in flight: none until that one ends.
        deciding = _run(instance, live_decide, dg.DagsterRunStatus.STARTED)
        _run(instance, live_ingest, dg.DagsterRunStatus.SUCCESS)
        requests, cursor = _evaluate(instance, zone, cursor)
        assert requests == {}
        instance.report_run_failed(instance.get_run_by_id(deciding))
        requests, cursor = _evaluate(instance, zone, cursor)
        assert set(requests) == {"live_decide"}

        # New batches and no ingestion in flight: a new run, whose run key is new.
        _land(zone, 1)
        first, cursor = _evaluate(instance, zone, cursor)
        _land(zone, 1)
        second, cursor = _evaluate(instance, zone, cursor)
        assert first["live_ingest"].run_key != second["live_ingest"].run_key


INGEST_RUN = """
import dagster as dg
from resources import default_resources
from revorch.definitions import defs

with dg.DagsterInstance.get() as instance:
    result = defs.resolve_job_def("live_ingest").execute_in_process(
        instance=instance, resources=default_resources()
    )
raise SystemExit(0 if result.success else 1)
"""

INGESTER = """
import sys, time
from pathlib import Path
import dagster as dg
from revorch.definitions import materialize

database, landing, stop = sys.argv[1:4]
log = dg.AssetSelection.assets(["crm", "change_log"], ["crm", "quarantine"])
runs = 0
while not Path(stop).exists() or runs == 0:
    materialize(log, database=database, landing=landing)
    runs += 1
    if runs == 1:
        print("ready", flush=True)
print(runs)
"""


@pytest.mark.slow
@pytest.mark.file_only(
    "one claim per batch comes from the file's writer lock (an ingestion archives its batches "
    "before the next one lists them); on DuckLake the loser records them again, all duplicates "
    "(tests/test_ducklake.py: two ingestions at once, every event once)"
)
def test_two_racing_ingestions_claim_each_batch_exactly_once(tmp_path):
    zone = LandingZone(tmp_path / "landing").ensure()
    database, stop = tmp_path / "revorch.duckdb", tmp_path / "stop"
    config = SimulationConfig(contacts=300, seed=3)
    landed = [
        p.name.removesuffix(".ndjson")
        for p in stream_live(zone, config, events_per_batch=30, interval_seconds=0, max_batches=3)
    ]
    command = [sys.executable, "-c", INGESTER, str(database), str(zone.root), str(stop)]
    workers = [
        subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        for worker in workers:  # each has run once: both are in their loop
            assert worker.stdout.readline().strip() == "ready"
        # Batches keep landing while both ingest in a loop.
        for path in stream_live(
            zone, config, events_per_batch=30, interval_seconds=0.3, max_batches=25
        ):
            landed.append(path.name.removesuffix(".ndjson"))
        stop.touch()
        runs = [int(w.communicate(timeout=300)[0].split()[-1]) for w in workers]
        assert [w.returncode for w in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    # One last ingestion takes whatever landed after the workers' last look.
    materialize_log = subprocess.run(
        [*command[:3], str(database), str(zone.root), str(stop)], cwd=REPO, check=True
    )
    assert materialize_log.returncode == 0

    with read_state(database) as conn:
        claims = conn.execute(
            "SELECT batch_id, count(*), count(DISTINCT run_id) FROM landing_batches GROUP BY 1"
        ).fetchall()
        duplicates, loaded, log_rows = conn.execute(
            "SELECT sum(duplicates), sum(loaded), (SELECT count(*) FROM change_log) "
            "FROM landing_batches"
        ).fetchone()
        run_count = conn.execute("SELECT count(DISTINCT run_id) FROM landing_batches").fetchone()[0]
    assert sum(runs) >= 2
    assert run_count >= 2, "the batches were all taken by one run: the race did not happen"
    assert sorted(batch for batch, _, _ in claims) == sorted(landed)
    assert [c for c in claims if c[1] != 1] == [], "a batch was claimed by more than one run"
    assert duplicates == 0 and loaded == log_rows
    assert zone.pending() == []


def _step_starts(instance, run_id: str) -> dict[str, float]:
    return {
        e.step_key: e.timestamp
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    }


def _step_successes(instance, run_id: str) -> dict[str, float]:
    return {
        e.step_key: e.timestamp
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
    }


def _review(instance, action_id: str, run_id: str | None = None):
    """Approve ``action_id`` with the review_actions job, as the CLI and the inbox do."""
    config = {"action_ids": [action_id], "decision": "approve", "reviewer": "ana"}
    return defs.resolve_job_def("review_actions").execute_in_process(
        instance=instance,
        run_config={"ops": {"governance__approval_queue": {"config": config}}},
        resources=_resources(),
        run_id=run_id,
    )


def _resources():
    from resources import default_resources

    return default_resources()  # the environment as the test set it (REVORCH_HOME)


@pytest.fixture
def home(copy_crm, monkeypatch):
    crm = copy_crm("governed")
    for name in ("REVORCH_DB", "REVORCH_LANDING", "REVORCH_PUBLISHED_DB", "REVORCH_OUTBOX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REVORCH_HOME", str(crm.root))
    return crm


def _pending_approval(home) -> str:
    with read_state(home.database) as conn:
        return conn.execute(
            "SELECT action_id FROM governance.approval_queue ORDER BY action_id LIMIT 1"
        ).fetchone()[0]


def test_a_review_waiting_for_the_writer_says_which_run_holds_it(home, tmp_path):
    action = _pending_approval(home)
    said: list[str] = []
    with _project_instance(tmp_path) as instance:
        storage = instance.event_log_storage
        # A live_ingest run is in its crm_current_state step: it holds the only writer slot.
        ingest_run = _run(instance, live_ingest, dg.DagsterRunStatus.STARTED)
        storage.initialize_concurrency_limit_to_default(DUCKDB_WRITER_POOL)  # as a run does
        claim = storage.claim_concurrency_slot(
            DUCKDB_WRITER_POOL, ingest_run, "crm_current_state", 5
        )
        assert claim.is_claimed
        review_run = str(uuid.uuid4())
        result: list = []
        with say_while_waiting(instance, review_run, said.append, poll_seconds=0.1):
            worker = threading.Thread(
                target=lambda: result.append(_review(instance, action, review_run))
            )
            worker.start()
            deadline = time.monotonic() + 120
            while not said and time.monotonic() < deadline:
                time.sleep(0.1)
            # Still waiting, and told why; then the ingestion step ends.
            assert worker.is_alive()
            storage.free_concurrency_slot_for_step(ingest_run, "crm_current_state")
            worker.join(timeout=300)
        assert result and result[0].success
    assert said[0].startswith(f"waiting for the DuckDB writer: run {ingest_run[:8]} (live_ingest)")
    assert "crm_current_state" in said[0]
    assert said[-1].startswith("took the DuckDB writer after")


@pytest.mark.slow
def test_an_approval_is_dispatched_while_an_ingestion_run_is_in_flight(home, tmp_path):
    action = _pending_approval(home)
    # A live batch big enough that the ingestion run has many steps still to go.
    list(
        stream_live(
            home.landing,
            SimulationConfig(contacts=1_500, seed=5),
            events_per_batch=2_000,
            interval_seconds=0,
            max_batches=1,
        )
    )
    with _project_instance(tmp_path) as instance:
        # The ingestion run in a process of its own, as the daemon launches it (two runs in
        # one process share Dagster's logging set-up, which is not thread-safe).
        ingesting = subprocess.Popen(
            [sys.executable, "-c", INGEST_RUN],
            cwd=REPO,
            env={**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster")},
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            ingest_run = None
            while ingest_run is None and time.monotonic() < deadline:
                runs = instance.get_run_records(dg.RunsFilter(job_name="live_ingest"), limit=1)
                if runs and _step_starts(instance, runs[0].dagster_run.run_id):
                    ingest_run = runs[0].dagster_run.run_id
                time.sleep(0.05)
            assert ingest_run, "the ingestion run did not start"

            review = _review(instance, action)
            # A stand-in step takes the writer pool's one slot as soon as the ingestion's
            # current step frees it (the highest priority waiting) and holds it until the
            # dispatch step is done: the dispatch step shows it needs no writer slot. (The
            # dispatch run's audit-trail step does; it runs once the stand-in lets go.) The
            # ingestion, four steps, may have reached its last step by then.
            storage = instance.event_log_storage
            while not storage.claim_concurrency_slot(
                DUCKDB_WRITER_POOL, "stand-in", "stand_in", 100
            ).is_claimed:
                time.sleep(0.05)  # pytest-timeout is the guard against a hang
            dispatch_run = str(uuid.uuid4())
            runs = []
            dispatching = threading.Thread(
                target=lambda: runs.append(
                    defs.resolve_job_def("dispatch_actions").execute_in_process(
                        instance=instance, resources=_resources(), run_id=dispatch_run
                    )
                )
            )
            dispatching.start()
            try:
                while not _step_successes(instance, dispatch_run).get(
                    "governance__dispatched_actions"
                ):
                    assert dispatching.is_alive(), "the dispatch run ended before its step"
                    time.sleep(0.05)
                assert any(
                    slot.run_id == "stand-in"
                    for slot in storage.get_concurrency_info(DUCKDB_WRITER_POOL).claimed_slots
                ), "the dispatch step ran while the stand-in held the writer"
            finally:
                storage.free_concurrency_slot_for_step("stand-in", "stand_in")
                dispatching.join(timeout=600)
            [dispatch] = runs
            assert ingesting.wait(timeout=600) == 0
        finally:
            if ingesting.poll() is None:
                os.killpg(ingesting.pid, signal.SIGKILL)
                ingesting.wait()
        assert review.success and dispatch.success

        ingest_steps = _step_starts(instance, ingest_run)
        review_steps = _step_starts(instance, review.run_id)
        ingest_ended = instance.get_run_stats(ingest_run).end_time
    # The review took the writer between the ingestion's steps: it did not wait for the run.
    assert review_steps["governance__approval_queue"] < ingest_steps["stage_chain"]
    assert review_steps["governance__approval_queue"] < ingest_ended
    with read_state(home.database) as conn:
        status = conn.execute(
            "SELECT status FROM governance.actions WHERE action_id = ?", [action]
        ).fetchone()[0]
    assert status == "sent"
    assert action in home.outbox.read_text()


def test_the_approvals_sensor_leaves_dispatch_to_a_review_or_dispatch_run_in_flight(
    tmp_path, monkeypatch
):
    from sensors.approvals import approved_actions_sensor

    monkeypatch.setenv("REVORCH_HOME", str(tmp_path))
    for name in ("REVORCH_DB", "REVORCH_PUBLISHED_DB", "REVORCH_DISPATCH_JOURNAL"):
        monkeypatch.delenv(name, raising=False)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance)
        message = approved_actions_sensor(context).skip_message
        if access.is_lake():  # the sensor reads the catalog live: this test's lake, empty
            assert message == "nothing approved waits"
        else:  # nothing has published the analysts' copy it reads
            assert "no state store at" in message and "published" in message
        # `revorch approvals approve` reviews, then dispatches in its own process.
        for job in ("review_actions", "dispatch_actions"):
            run_id = instance.create_run_for_job(
                job_def=defs.resolve_job_def(job),
                status=dg.DagsterRunStatus.STARTED,
                tags=dict(defs.resolve_job_def(job).tags),
            ).run_id
            skipped = approved_actions_sensor(dg.build_sensor_context(instance=instance))
            assert skipped.skip_message == f"review or dispatch run {run_id[:8]} is in flight"
            instance.report_run_failed(instance.get_run_by_id(run_id))
