"""Start ingestion when batches land."""

import hashlib

import dagster as dg

from resources import LandingZoneResource

JOB = "revorch_main"
# Runs of the main job that have not begun yet: one of them will ingest every batch waiting
# when it starts, so asking for another would only queue a run with nothing left to do.
WAITING = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
]


@dg.sensor(
    job_name=JOB,
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a run of revorch_main when batches wait in the landing zone and no "
    "run of it is already waiting to start.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    pending = [p.name for p in landing_zone.zone().pending()]
    if not pending:
        return dg.SkipReason("no batches waiting")
    # Under a live stream batches land faster than runs finish: keep at most one run waiting
    # behind the one that runs, instead of a queue that grows with every batch.
    waiting = context.instance.get_run_ids(dg.RunsFilter(job_name=JOB, statuses=WAITING), limit=1)
    if waiting:
        return dg.SkipReason(
            f"{len(pending)} batches wait; run {waiting[0][:8]} of {JOB} will take them"
        )
    # One run per set of waiting batches: evaluating the same set again requests nothing new,
    # while a failed run's batches are retried as soon as another batch lands.
    key = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:16]
    context.update_cursor(pending[-1])
    return dg.RunRequest(run_key=key, tags={"revorch/batches": str(len(pending))})
