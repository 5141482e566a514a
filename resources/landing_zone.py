"""The landing zone as a Dagster resource."""

import dagster as dg
from pydantic import Field

from revorch.landing import LandingZone


class LandingZoneResource(dg.ConfigurableResource):
    """Where sources drop CRM change batches (docs/landing_zone.md)."""

    path: str = Field(description="Folder of the landing zone.")
    max_event_bytes: int = Field(
        default=256 * 1024, description="Lines longer than this are quarantined as oversized."
    )
    max_batches_per_run: int = Field(
        default=2_000, description="At most this many batches are ingested by one run."
    )

    def zone(self) -> LandingZone:
        return LandingZone(self.path).ensure()
