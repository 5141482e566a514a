"""The approval workflow in a running `dagster dev`: a person approves in the launchpad of
`review_actions` (launched through the webserver's GraphQL API, as the Launch button does),
and the approvals sensor dispatches the action, once; a rejection in the launchpad closes
another for good."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pytest

from conftest import read_state
from revorch.state import access
from test_live import latency

pytestmark = pytest.mark.slow

SEED_CONTACTS = 800

LAUNCH_WITH_CONFIG = """
mutation Launch($selector: JobOrPipelineSelector!, $config: RunConfigData) {
  launchRun(executionParams: {selector: $selector, runConfigData: $config}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


SCHEDULE_ID = """
query Schedule($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) { __typename ... on Schedule { id } }
}
"""
STOP_SCHEDULE = """
mutation Stop($id: String) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}
"""


def _stop_schedule(port: int, name: str) -> None:
    """Turn a schedule off, as its toggle in the UI does."""
    (repo,) = latency.graphql(port, latency.REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
    selector = {
        "repositoryLocationName": repo["location"]["name"],
        "repositoryName": repo["name"],
        "scheduleName": name,
    }
    found = latency.graphql(port, SCHEDULE_ID, {"selector": selector})["scheduleOrError"]
    assert found["__typename"] == "Schedule", found
    stopped = latency.graphql(port, STOP_SCHEDULE, {"id": found["id"]})["stopRunningSchedule"]
    assert stopped.get("scheduleState", {}).get("status") == "STOPPED", stopped


def _published(home: Path, published: Path) -> duckdb.DuckDBPyConnection:
    """What the analysts (and the approvals sensor) read: the published copy, or on DuckLake
    (``state_backend``; `dagster dev` gets the environment) this test's lake, live."""
    if access.is_lake():
        return read_state(home / "revorch.duckdb")
    return duckdb.connect(str(published), read_only=True)


def _wait_for_batches(home: Path, published: Path, batch_ids: list[str], timeout: float) -> None:
    """Until every batch is in what the analysts read (:func:`_published`)."""
    if not access.is_lake():
        latency.wait_for_batches(published, batch_ids, timeout=timeout)
        return

    def ingested() -> bool:
        with _published(home, published) as conn:
            found = {b for (b,) in conn.execute("SELECT batch_id FROM landing_batches").fetchall()}
        return set(batch_ids) <= found

    _wait(ingested, timeout, f"{len(batch_ids)} seed batches in the lake")


def _sent_by(home: Path, action_id: str) -> list[str]:
    """The runs whose dispatcher recorded sending the action."""
    with read_state(home / "revorch.duckdb") as conn:
        rows = conn.execute(
            "SELECT run_id FROM governance.audit_log "
            "WHERE action_id = ? AND event = 'dispatched' ORDER BY seq",
            [action_id],
        ).fetchall()
    return [run_id for (run_id,) in rows]


def _launch_review(port: int, config: dict) -> str:
    (repo,) = latency.graphql(port, latency.REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
    selector = {
        "repositoryLocationName": repo["location"]["name"],
        "repositoryName": repo["name"],
        "jobName": "review_actions",
    }
    run_config = {"ops": {"governance__approval_queue": {"config": config}}}
    data = latency.graphql(port, LAUNCH_WITH_CONFIG, {"selector": selector, "config": run_config})
    launched = data["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _reviewed(port: int, config: dict) -> dict:
    """Launch one review and wait for its run to end; return the run."""
    run_id = _launch_review(port, config)

    def finished():
        found = [r for r in latency.runs(port) if r["runId"] == run_id]
        return found[0] if found and found[0]["status"] in ("SUCCESS", "FAILURE") else None

    return _wait(finished, 300, f"review run {run_id}")


def _outbox_ids(home: Path) -> list[str]:
    outbox = home / "outbox" / "actions.jsonl"
    if not outbox.exists():
        return []
    return [json.loads(line)["action_id"] for line in outbox.read_text().splitlines()]


def test_an_approval_in_the_launchpad_is_dispatched_by_the_sensor_once(tmp_path):
    env = latency.prepare_home(tmp_path / "revorch")
    home, published = Path(env["REVORCH_HOME"]), latency.published_path(env)
    seed_ids = latency.seed_history(env, SEED_CONTACTS)
    dev = latency.DagsterDev(env, tmp_path / "logs")
    try:
        dev.start()
        dev.wait_ready(timeout=240)
        # The hourly approval check (approve_and_dispatch, at :30) also sends what is approved:
        # off, so that the run which sends the approval is the sensor's, whatever the hour.
        _stop_schedule(dev.port, "approval_sla_check_schedule")
        _wait_for_batches(home, published, seed_ids, timeout=300)

        def two_waiting() -> list[str] | None:
            with _published(home, published) as conn:
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT action_id FROM governance.approval_queue ORDER BY action_id"
                    ).fetchall()
                ]
            return ids if len(ids) >= 2 else None

        # The seed's batches reach the published copy with the ingest lane; the actions the
        # shipped policy holds for approval arrive with the decide lane's run after it.
        waiting = _wait(two_waiting, 900, "two actions the shipped policy holds for approval")
        approved, rejected = waiting[0], waiting[1]
        assert approved not in _outbox_ids(home)
        # The decide lane's run that held them has ended: nothing but the sensor sends next.
        latency.wait_runs_settled(dev.port, timeout=300)

        review = {"action_ids": [approved], "decision": "approve", "reviewer": "alice"}
        run = _reviewed(dev.port, review)
        assert run["status"] == "SUCCESS"
        _wait(lambda: approved in _outbox_ids(home), 300, "the approved action in the outbox")

        refusal = {
            "action_ids": [rejected],
            "decision": "reject",
            "reviewer": "bob",
            "comment": "we call them ourselves",
        }
        run = _reviewed(dev.port, refusal)
        assert run["status"] == "SUCCESS"
        # Approving the rejected one afterwards fails the run and changes nothing.
        again = {"action_ids": [rejected], "decision": "approve", "reviewer": "eve"}
        run = _reviewed(dev.port, again)
        assert run["status"] == "FAILURE"
        latency.wait_runs_settled(dev.port, timeout=300)
        run_list = latency.runs(dev.port)
    finally:
        dev.stop()

    dispatches = latency.sensor_runs(run_list, sensor="approved_actions_sensor")
    assert {r["jobName"] for r in dispatches} == {"dispatch_actions"}
    (sent_by,) = _sent_by(home, approved)
    sender = [r for r in run_list if r["runId"] == sent_by]
    assert sender and sender[0] in dispatches, f"sent by {sender or sent_by}, not the sensor's run"
    sent = _outbox_ids(home)
    assert sent.count(approved) == 1
    assert rejected not in sent
    with read_state(home / "revorch.duckdb") as conn:
        statuses = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions WHERE list_contains(?, action_id)",
                [[approved, rejected]],
            ).fetchall()
        )
        reviewers = conn.execute(
            "SELECT action_id, actor, comment FROM governance.reviews ORDER BY recorded_at"
        ).fetchall()
    assert statuses == {approved: "sent", rejected: "rejected"}
    assert reviewers == [
        (approved, "human:alice", ""),
        (rejected, "human:bob", "we call them ourselves"),
    ]
