"""HubSpot polling as a Dagster job on a schedule: changed records land in the landing zone,
where the landing-zone sensor takes them. Runs while HUBSPOT_ACCESS_TOKEN is set when the
code loads (otherwise the schedule starts stopped; start it in the UI once the token is set)."""

import os

import dagster as dg

from resources import LandingZoneResource
from resources.hubspot import HubSpotResource
from revorch.sources.hubspot.config import TOKEN_VARIABLE
from revorch.sources.hubspot.poller import poll


@dg.op(tags={"kind": "hubspot"})
def poll_hubspot_changes(
    context: dg.OpExecutionContext, hubspot: HubSpotResource, landing_zone: LandingZoneResource
) -> None:
    """Land every HubSpot record changed or archived since the cursor (docs/sources/hubspot.md)."""
    report = poll(
        hubspot.api(),
        landing_zone.zone(),
        hubspot.cursor_path,
        hubspot.own_writes(),
        hubspot.poll_settings(),
    )
    context.log.info(f"hubspot: {report}")
    context.add_output_metadata({f"hubspot/{k}": v for k, v in sorted(report.counts.items())})


@dg.job(description="Poll HubSpot for changed and archived records into the landing zone.")
def poll_hubspot():
    poll_hubspot_changes()


hubspot_poll_schedule = dg.ScheduleDefinition(
    name="hubspot_poll_schedule",
    job=poll_hubspot,
    # Every 5 minutes by default; REVORCH_HUBSPOT_POLL_CRON changes it (docs/sources/hubspot.md).
    cron_schedule=os.environ.get("REVORCH_HUBSPOT_POLL_CRON", "*/5 * * * *"),
    default_status=(
        dg.DefaultScheduleStatus.RUNNING
        if os.environ.get(TOKEN_VARIABLE)
        else dg.DefaultScheduleStatus.STOPPED
    ),
    description="Poll HubSpot on an interval.",
)
