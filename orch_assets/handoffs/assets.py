"""Handoffs: the follow-up cadence, the SLA escalation and the renewal-risk path.

Each is a branch of its own in the asset graph, with its rule in the SQL file beside it and
its thresholds in config/lifecycle.yaml. (Onboarding, the closed-won handoff, is the
stages/onboarding asset.)
"""

from pathlib import Path

import dagster as dg

from orch_assets.stages.assets import ACCOUNT_LIFECYCLE, CONTACT_LIFECYCLE, crm, sql_asset

SQL_DIR = Path(__file__).parent
ADOPTION_HEALTH = dg.AssetKey(["stages", "adoption_health"])


def handoff(name: str, deps: list[dg.AssetKey], description: str, summary_sql: str):
    return sql_asset(
        ["handoffs", name],
        sql_files=[SQL_DIR / f"{name}.sql"],
        relation=f"handoffs.{name}",
        deps=deps,
        description=description,
        group_name="handoffs",
        summary_sql=summary_sql,
    )


follow_up_cadence = handoff(
    "follow_up_cadence",
    [CONTACT_LIFECYCLE, crm("activities")],
    "Open leads with fresh buying signals (replies, meetings, pricing visits, forms) move to "
    "the accelerated follow-up cadence.",
    "SELECT count(*) AS accelerated FROM {relation}",
)
sla_escalations = handoff(
    "sla_escalations",
    [CONTACT_LIFECYCLE, crm("activities"), crm("owners")],
    "First sales touch of every MQL and SQL against its SLA; breaches escalate to a manager.",
    "SELECT count(*) FILTER (WHERE status = 'breached') AS breached, "
    "count(*) FILTER (WHERE status = 'late') AS late, "
    "count(*) FILTER (WHERE status = 'met') AS met, "
    "count(*) FILTER (WHERE status = 'pending') AS pending FROM {relation}",
)
renewal_risk = handoff(
    "renewal_risk",
    [ADOPTION_HEALTH, ACCOUNT_LIFECYCLE, crm("companies")],
    "Customers with falling seat use or angry tickets, on the renewal-risk path.",
    "SELECT count(*) AS accounts_at_risk, sum(arr) AS arr_at_risk FROM {relation}",
)

handoff_assets = [follow_up_cadence, sla_escalations, renewal_risk]
