"""Scheduled scans: what must be re-checked as time passes, even when nothing changes."""

import dagster as dg

PUBLISHED = dg.AssetKey(["analytics", "published_state"])


def _job(name: str, description: str, selection: dg.AssetSelection):
    return dg.define_asset_job(
        name,
        selection=selection | dg.AssetSelection.assets(PUBLISHED),
        description=description,
        executor_def=dg.in_process_executor,
    )


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
    "The business metrics and the funnel report.",
    dg.AssetSelection.groups("metrics") | dg.AssetSelection.assets(["reports", "funnel_report"]),
)
retrain_offline_models = _job(
    "retrain_offline_models",
    "Retrain the offline tier's lead, deal and renewal models on the latest history.",
    dg.AssetSelection.assets(["agents", "offline_models"]),
)

schedules = [
    dg.ScheduleDefinition(
        job=renewal_risk_scan,
        cron_schedule="0 6 * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily renewal-risk scan at 06:00 UTC.",
    ),
    dg.ScheduleDefinition(
        job=sla_check,
        cron_schedule="0 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly SLA check.",
    ),
    dg.ScheduleDefinition(
        job=funnel_report_job,
        cron_schedule="0 7 * * 1",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly funnel report, Mondays at 07:00 UTC.",
    ),
    dg.ScheduleDefinition(
        job=retrain_offline_models,
        cron_schedule="0 5 * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily retraining of the offline models at 05:00 UTC.",
    ),
]
jobs = [renewal_risk_scan, sla_check, funnel_report_job, retrain_offline_models]
