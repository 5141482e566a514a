"""Jobs beside revorch_main: scheduled scans (what must be re-checked as time passes, even
when nothing changes) and the approval workflow's jobs.

Why jobs and schedules, not ``AutomationCondition.on_cron`` on the assets: on_cron runs an asset
only after all its upstream assets were updated since the tick, so on a quiet night (no change
landed) the SLA check, the renewal scan and the approval SLA check would never run and nothing
would escalate (tests/test_clock.py); and per-asset conditions run each asset in its own run,
while a scan must run its steps in order (lifecycle, then the handoff, then the analysts' copy)
as one unit. The weekly report likewise arrives every Monday, its windows moving with the clock.
What only needs new data (retraining the offline models) uses on_cron on its asset.
"""

import dagster as dg

from orch_assets.governance.checks import nothing_sent_without_a_verdict
from orch_assets.ingestion.jobs import GOVERNANCE_PRIORITY, LANE_TAG, PRIORITY_TAG
from orch_assets.stages.checks import stage_checks
from revorch.instance.writer import writer_held_executor

PUBLISHED = dg.AssetKey(["analytics", "published_state"])


def _job(name: str, description: str, selection: dg.AssetSelection, tags: dict | None = None):
    people_first = tags is not None
    return dg.define_asset_job(
        name,
        selection=selection | dg.AssetSelection.assets(PUBLISHED),
        description=description,
        # A person's runs take the DuckDB writer once for all their steps, not once a step
        # behind the live lanes' steps (revorch/instance/writer.py).
        executor_def=writer_held_executor if people_first else dg.in_process_executor,
        tags=tags,
    )


# A person waits on these: first in the run queue and first to the duckdb_writer pool, ahead
# of the live lanes (orch_assets/ingestion/jobs.py).
PEOPLE_FIRST = {LANE_TAG: "governance", PRIORITY_TAG: GOVERNANCE_PRIORITY}


renewal_risk_scan = _job(
    "renewal_risk_scan",
    "Account stages, health, renewals and the renewal-risk path, as of today.",
    dg.AssetSelection.assets(
        ["stages", "account_lifecycle"],
        ["stages", "adoption_health"],
        ["stages", "renewals"],
        ["stages", "expansion"],
        ["handoffs", "renewal_risk"],
    ),
)
sla_check = _job(
    "sla_check",
    "First-touch SLAs of every MQL and SQL; breaches escalate.",
    dg.AssetSelection.assets(["stages", "contact_lifecycle"], ["handoffs", "sla_escalations"]),
)
funnel_report_job = _job(
    "weekly_funnel_report",
    "The business metrics, the funnel report and the weekly report (docs/report.md).",
    dg.AssetSelection.groups("metrics")
    | dg.AssetSelection.assets(["reports", "funnel_report"], ["reports", "weekly_report"]),
)

# The approval workflow. review_actions takes a person's verdict from the launchpad (config of
# governance/approval_queue); dispatch_actions sends what is approved (the approvals sensor
# starts it); the hourly check escalates approvals past their SLA.
DISPATCH_STEPS = [["governance", "dispatched_actions"], ["governance", "audit_trail"]]
review_actions = _job(
    "review_actions",
    "Approve or reject waiting actions: in the launchpad, set ops.governance__approval_queue."
    "config (action_ids, decision approve|reject, reviewer, comment).",
    # The audit trail too: its materialization anchors the review's rows in Dagster.
    dg.AssetSelection.assets(["governance", "approval_queue"], ["governance", "audit_trail"]),
    PEOPLE_FIRST,
)
dispatch_actions = _job(
    "dispatch_actions",
    "Send every approved or allowed action that waits, after judging it again.",
    dg.AssetSelection.assets(*DISPATCH_STEPS),
    PEOPLE_FIRST,
)
# What `revorch approvals approve` runs: the review, then the dispatch of what it approved, in
# one run (one process, one audit-trail step and one publish instead of two of each). Without
# a review in its config it is the hourly approval SLA check: escalate approvals past their SLA,
# close expired ones, send what waits.
approve_and_dispatch = _job(
    "approve_and_dispatch",
    "Approve waiting actions and send them at once: set ops.governance__approval_queue.config "
    "(action_ids, decision approve, reviewer, comment). With no review (the hourly schedule): "
    "escalate approvals past their SLA, close expired ones, send the escalations.",
    dg.AssetSelection.assets(["governance", "approval_queue"], *DISPATCH_STEPS),
    PEOPLE_FIRST,
)

# The checks of a run look at what changed since they last passed (docs/data_quality.md,
# docs/governance.md); once a night every check looks at every row, so what was written behind
# the pipeline's back (by hand, in the file) is found within a day.
FULL_CHECK = {"config": {"full_check": True}}
full_checks = dg.define_asset_job(
    "full_checks",
    selection=dg.AssetSelection.all_asset_checks(),
    description="Every data-quality and governance check, each over every row (full_check), "
    "not only the changed slice a run's checks look at.",
    executor_def=dg.in_process_executor,  # one process, its checks one after another
    config={
        "ops": {
            check.node_def.name: FULL_CHECK
            for check in [*stage_checks, nothing_sent_without_a_verdict]
        }
    },
)

schedules = [
    dg.ScheduleDefinition(
        name=name,
        job=job,
        cron_schedule=cron,
        description=description,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    for name, job, cron, description in (
        (
            "renewal_risk_scan_schedule",
            renewal_risk_scan,
            "0 6 * * *",
            "Daily renewal-risk scan at 06:00 UTC.",
        ),
        ("sla_check_schedule", sla_check, "0 * * * *", "Hourly SLA check."),
        (
            "weekly_funnel_report_schedule",
            funnel_report_job,
            "0 7 * * 1",
            "Weekly funnel report, Mondays at 07:00 UTC.",
        ),
        (
            "full_checks_schedule",
            full_checks,
            "0 3 * * *",
            "Nightly full data-quality check at 03:00 UTC (every row, not the changed slice).",
        ),
        (
            "approval_sla_check_schedule",
            approve_and_dispatch,
            "30 * * * *",
            "Hourly approval SLA check (approve_and_dispatch with no review).",
        ),
    )
]
jobs = [
    renewal_risk_scan,
    sla_check,
    funnel_report_job,
    review_actions,
    dispatch_actions,
    approve_and_dispatch,
    full_checks,
]
