"""The HubSpot portal as a Dagster resource: its token from the environment, its limits."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from revorch.sources.hubspot import config
from revorch.sources.hubspot.api import HubSpotApi, Limits
from revorch.sources.hubspot.own_writes import OwnWrites
from revorch.sources.hubspot.poller import PollSettings


class HubSpotResource(dg.ConfigurableResource):
    """A HubSpot portal (docs/sources/hubspot.md); ``access_token`` comes from
    ``dg.EnvVar("HUBSPOT_ACCESS_TOKEN")``."""

    access_token: str = Field(description="Private app access token; environment only.")
    base_url: str = Field(default_factory=config.base_url)
    state_dir: str = Field(
        default_factory=lambda: str(config.state_dir()),
        description="Folder of the poll cursor and the ledger of Revorch's own writes.",
    )
    requests_per_10s: int = Field(default_factory=lambda: config.limits().requests_per_10s)
    searches_per_second: int = Field(default_factory=lambda: config.limits().searches_per_second)
    lookback_seconds: float = Field(
        default=60.0, description="Re-read this much before the cursor (search index lag)."
    )

    def api(self) -> HubSpotApi:
        limits = Limits(self.requests_per_10s, self.searches_per_second)
        return HubSpotApi(self.access_token, self.base_url, limits)

    extra_properties: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in config.extra_properties().items()},
        description="More HubSpot properties to land as they are, by object type.",
    )

    attribution: bool = Field(
        default_factory=config.attribution,
        description="Read property history to credit each change to who made it "
        "(REVORCH_HUBSPOT_ATTRIBUTION; about half a poll's requests).",
    )

    def poll_settings(self) -> PollSettings:
        extra = {k: tuple(v) for k, v in self.extra_properties.items()}
        return PollSettings(
            lookback_seconds=self.lookback_seconds,
            extra_properties=extra,
            attribution=self.attribution,
        )

    @property
    def cursor_path(self) -> Path:
        return Path(self.state_dir) / "cursor.json"

    def own_writes(self) -> OwnWrites:
        return OwnWrites(Path(self.state_dir) / "own-writes.sqlite3")
