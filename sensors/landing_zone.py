"""Start ingestion when batches land, and the decisions after it: one run per lane at a time."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from orch_assets.ingestion.jobs import LANE_TAG, live_decide, live_ingest
from resources import LandingZoneResource

# A run in any of these states will still take batches or write: a lane with one of them is busy.
IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def run_in_flight(instance: dg.DagsterInstance, lane: str) -> str | None:
    """The id of a run of ``lane`` (run tag revorch/lane) queued or running, if any."""
    ids = instance.get_run_ids(dg.RunsFilter(tags={LANE_TAG: lane}, statuses=IN_FLIGHT), limit=1)
    return ids[0] if ids else None


def last_ingest_succeeded(instance: dg.DagsterInstance) -> str | None:
    """The id of the newest live_ingest run that succeeded: the stages as it left them."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=live_ingest.name, statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    return records[0].dagster_run.run_id if records else None


@dg.sensor(
    jobs=[live_ingest, live_decide],
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps one live_ingest run in flight while batches wait in the landing zone "
    "(that run takes every batch waiting when its ingestion step starts; later batches wait "
    "for the next run), and one live_decide run after new stages: never a queue of runs.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    instance = context.instance
    cursor = json.loads(context.cursor) if context.cursor else {}
    requests: list[dg.RunRequest] = []
    reasons: list[str] = []

    pending = [p.name for p in landing_zone.zone().pending()]
    ingesting = run_in_flight(instance, "ingest") if pending else None
    if not pending:
        reasons.append("no batches waiting")
    elif ingesting:
        reasons.append(
            f"{len(pending)} batches wait; live_ingest run {ingesting[:8]} is in flight, "
            "the next run takes them"
        )
    else:
        # One run per set of waiting batches: evaluating the same set again requests nothing
        # new, while a failed run's batches are retried as soon as another batch lands.
        key = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                job_name=live_ingest.name,
                run_key=f"ingest-{key}",
                tags={"revorch/batches": str(len(pending))},
            )
        )

    # Decide over the stages each successful ingestion left, at most one run at a time; a
    # decide run that starts late covers every ingestion before it.
    staged = last_ingest_succeeded(instance)
    if staged and staged != cursor.get("decided_after"):
        deciding = run_in_flight(instance, "decide")
        if deciding:
            reasons.append(f"live_decide run {deciding[:8]} is in flight")
        else:
            requests.append(
                dg.RunRequest(
                    job_name=live_decide.name,
                    run_key=f"decide-{staged}",
                    tags={"revorch/after_ingest": staged},
                )
            )
            cursor["decided_after"] = staged
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else "; ".join(reasons) or "stages already decided",
        cursor=json.dumps(cursor, sort_keys=True),
    )
