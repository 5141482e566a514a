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
    batches_per_transaction: int = Field(
        default=20,
        description="Batches committed together; a run of more commits several transactions, "
        "so a first load's memory and a crash's lost work stay bounded.",
    )

    def zone(self) -> LandingZone:
        return LandingZone(self.path).ensure()
