"""Start ingestion when batches land."""

import hashlib

import dagster as dg

from resources import LandingZoneResource


@dg.sensor(
    job_name="revorch_main",
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a run of revorch_main when batches wait in the landing zone.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing_zone: LandingZoneResource):
    pending = [p.name for p in landing_zone.zone().pending()]
    if not pending:
        return dg.SkipReason("no batches waiting")
    # One run per set of waiting batches: evaluating the same set again requests nothing new,
    # while a failed run's batches are retried as soon as another batch lands.
    key = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:16]
    context.update_cursor(pending[-1])
    return dg.RunRequest(run_key=key, tags={"revorch/batches": str(len(pending))})
