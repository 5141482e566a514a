"""Dispatch approved actions soon after a person approves them."""

import hashlib

import dagster as dg
import duckdb

from orch_assets.ingestion.jobs import LANE_TAG
from revorch import settings
from revorch.governance.journal import interrupted_attempts
from revorch.state.access import NoState, StateBusy, reading
from sensors.landing_zone import IN_FLIGHT

WAITING_SQL = """
SELECT action_id, status, attempts FROM governance.actions
WHERE status = 'approved' OR (status = 'retry' AND next_attempt_at <= now())
ORDER BY action_id
"""


@dg.sensor(
    job_name="dispatch_actions",
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests a dispatch_actions run when approved actions (or retries that are "
    "due) wait, or when a dispatcher died mid-delivery. Reads the analysts' published copy and "
    "the dispatch journal, so it never blocks the writer.",
)
def approved_actions_sensor(context: dg.SensorEvaluationContext):
    # A review or dispatch run in flight (the CLI's approve dispatches right after its review)
    # sends what waits, or publishes what is left to send: a second dispatcher beside it would
    # only compete for the writer.
    busy = context.instance.get_run_ids(
        dg.RunsFilter(tags={LANE_TAG: "governance"}, statuses=IN_FLIGHT), limit=1
    )
    if busy:
        return dg.SkipReason(f"review or dispatch run {busy[0][:8]} is in flight")
    # A dispatcher killed mid-delivery left attempts of unknown outcome: finish them now.
    interrupted = interrupted_attempts(settings.dispatch_journal_path())
    if interrupted:
        key = hashlib.sha256(repr(interrupted).encode()).hexdigest()[:16]
        return dg.RunRequest(
            run_key=f"recover-{key}", tags={"revorch/recover": str(len(interrupted))}
        )
    try:
        # The published copy, or the live catalog on DuckLake (revorch/state/access.py).
        with reading() as conn:
            waiting = conn.execute(WAITING_SQL).fetchall()
    except (NoState, StateBusy) as unreadable:
        return dg.SkipReason(str(unreadable))
    except duckdb.CatalogException:
        return dg.SkipReason("the state store has no governance tables yet")
    if not waiting:
        return dg.SkipReason("nothing approved waits")
    # One run per set of waiting actions and attempts: the same set asks for nothing new.
    key = hashlib.sha256(repr(waiting).encode()).hexdigest()[:16]
    return dg.RunRequest(run_key=key, tags={"revorch/approved": str(len(waiting))})
