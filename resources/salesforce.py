"""A Salesforce org as a Dagster resource; its secrets are read from the environment."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from revorch.sources.salesforce import PUBSUB_ENDPOINT
from revorch.sources.salesforce.sync import SalesforceSettings


class SalesforceResource(dg.ConfigurableResource):
    """How to reach the org (docs/sources/salesforce.md): an access token with its instance
    URL, or a connected app's client id and secret (client-credentials flow)."""

    instance_url: str | None = Field(
        default=None, description="https://<my domain>.my.salesforce.com"
    )
    access_token: str | None = Field(default=None, description="An OAuth access token.")
    client_id: str | None = Field(default=None, description="The connected app's consumer key.")
    client_secret: str | None = Field(default=None, description="Its consumer secret.")
    domain: str = Field(default="login", description="My Domain host, e.g. 'acme.my'.")
    org_id: str | None = Field(default=None, description="The org id; asked for when absent.")
    pubsub_endpoint: str = Field(default=PUBSUB_ENDPOINT)
    pubsub_tls: bool = Field(default=True)
    own_change_origin: str = Field(
        default="client=revorch",
        description="Change events whose changeOrigin holds this are Revorch's own writes.",
    )
    cursor_folder: str = Field(description="Where the poller and the subscriber keep cursors.")

    def settings(self) -> SalesforceSettings:
        return SalesforceSettings(
            instance_url=self.instance_url,
            access_token=self.access_token,
            client_id=self.client_id,
            client_secret=self.client_secret,
            domain=self.domain,
            tenant_id=self.org_id,
            pubsub_endpoint=self.pubsub_endpoint,
            pubsub_tls=self.pubsub_tls,
            own_change_origin=self.own_change_origin,
        )
