"""The landing zone: where every source drops CRM change batches (docs/landing_zone.md)."""

from revorch.landing.zone import (
    BATCH_SUFFIX,
    LandingZone,
    batch_id_of,
    check_source_name,
    durable_file,
)

__all__ = ["BATCH_SUFFIX", "LandingZone", "batch_id_of", "check_source_name", "durable_file"]
