"""Salesforce changes into the landing zone, as a Dagster job (the landing-zone sensor then
ingests them). Run it from the UI, a schedule, or `revorch poll salesforce`."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from resources import LandingZoneResource
from resources.salesforce import SalesforceResource
from revorch.sources.salesforce.sync import sync


class SalesforceSyncConfig(dg.Config):
    cdc_seconds: float = Field(
        default=0.0,
        description="After the REST poll, take Change Data Capture events for at most this "
        "long (0: REST only).",
    )


@dg.op
def sync_salesforce(
    context: dg.OpExecutionContext,
    config: SalesforceSyncConfig,
    salesforce: SalesforceResource,
    landing_zone: LandingZoneResource,
) -> None:
    """Poll every Salesforce object since its cursor, then optionally the CDC stream."""
    polled, streamed = sync(
        salesforce.settings(),
        landing_zone.zone(),
        cdc_seconds=config.cdc_seconds or None,
        folder=Path(salesforce.cursor_folder),
    )
    metadata: dict[str, int] = {
        "batches": polled.batches,
        "changed": sum(polled.changed.values()),
        "deleted": sum(polled.deleted.values()),
    }
    if streamed is not None:
        metadata |= {
            "cdc_events": streamed.received,
            "cdc_landed": streamed.landed,
            "cdc_own_writes_skipped": streamed.skipped_own,
            "cdc_reread": streamed.reread,
        }
    context.log.info(f"salesforce: {metadata}")
    context.add_output_metadata(metadata)


@dg.job(description="Land Salesforce changes (REST poll, then optionally CDC) in the landing zone.")
def salesforce_sync():
    sync_salesforce()
