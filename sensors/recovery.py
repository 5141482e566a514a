"""Recover runs whose process died while the daemon runs (`revorch ui`)."""

import dagster as dg

from revorch.instance.recovery import recover_abandoned_runs


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 30 s: fails runs of this host whose process is gone (kill -9, out of memory, a "
        "reboot) and frees the concurrency-pool slots they held, so later runs are not blocked."
    ),
)
def abandoned_runs_sensor(context: dg.SensorEvaluationContext):
    recovered = recover_abandoned_runs(context.instance)
    for run in recovered:
        context.log.warning(str(run))
    # It launches nothing: the tick's reason in the UI says what was recovered.
    return dg.SkipReason("; ".join(map(str, recovered)) or "no abandoned runs")
