"""Connect to an org and run one sync: what `revorch poll salesforce` and the Dagster job share.

Settings come from the environment (docs/sources/salesforce.md, "Settings"):
``SALESFORCE_INSTANCE_URL`` with ``SALESFORCE_ACCESS_TOKEN`` (a token from any OAuth flow),
or ``SALESFORCE_CLIENT_ID`` with ``SALESFORCE_CLIENT_SECRET`` and ``SALESFORCE_DOMAIN`` (the
client-credentials flow of a connected app).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from revorch import settings
from revorch.landing import LandingZone
from revorch.sources.salesforce.cdc import (
    ALL_CHANGE_EVENTS,
    PUBSUB_ENDPOINT,
    CdcSummary,
    ChangeEventSubscriber,
    PubSubAuth,
    pubsub_channel,
)
from revorch.sources.salesforce.cursor import CursorFile
from revorch.sources.salesforce.mapping import SOBJECTS
from revorch.sources.salesforce.poller import PollSummary, SalesforcePoller

if TYPE_CHECKING:
    import requests
    from simple_salesforce import Salesforce


@dataclass(frozen=True)
class SalesforceSettings:
    """How to reach one org. Either ``access_token`` (with ``instance_url``) or
    ``client_id`` and ``client_secret`` (with ``domain``, the My Domain host without
    ``.salesforce.com``, e.g. ``acme.my``)."""

    instance_url: str | None = None
    access_token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    domain: str = "login"
    tenant_id: str | None = None
    api_version: str = "59.0"
    pubsub_endpoint: str = PUBSUB_ENDPOINT
    pubsub_tls: bool = True  # off only for a local test server
    topic: str = ALL_CHANGE_EVENTS
    own_change_origin: str = "client=revorch"
    sobjects: tuple[str, ...] = SOBJECTS

    @classmethod
    def from_env(cls) -> SalesforceSettings:
        env = os.environ.get
        objects = env("SALESFORCE_OBJECTS")
        return cls(
            instance_url=env("SALESFORCE_INSTANCE_URL"),
            access_token=env("SALESFORCE_ACCESS_TOKEN"),
            client_id=env("SALESFORCE_CLIENT_ID"),
            client_secret=env("SALESFORCE_CLIENT_SECRET"),
            domain=env("SALESFORCE_DOMAIN") or "login",
            tenant_id=env("SALESFORCE_ORG_ID"),
            pubsub_endpoint=env("SALESFORCE_PUBSUB_ENDPOINT") or PUBSUB_ENDPOINT,
            pubsub_tls=(env("SALESFORCE_PUBSUB_TLS") or "true").lower() != "false",
            topic=env("SALESFORCE_CDC_TOPIC") or ALL_CHANGE_EVENTS,
            own_change_origin=env("SALESFORCE_OWN_CHANGE_ORIGIN") or "client=revorch",
            sobjects=tuple(objects.split(",")) if objects else SOBJECTS,
        )


def connect(config: SalesforceSettings, session: requests.Session | None = None) -> Salesforce:
    """A signed-in simple-salesforce client; ValueError naming what is missing if neither way
    of signing in is configured."""
    # Imported here: simple-salesforce (with zeep) takes most of a second to import.
    from simple_salesforce import Salesforce

    if config.access_token and config.instance_url:
        return Salesforce(
            instance_url=config.instance_url,
            session_id=config.access_token,
            version=config.api_version,
            session=session,
        )
    if config.client_id and config.client_secret:
        return Salesforce(
            consumer_key=config.client_id,
            consumer_secret=config.client_secret,
            domain=config.domain,
            version=config.api_version,
            session=session,
        )
    raise ValueError(
        "Salesforce is not configured: set SALESFORCE_INSTANCE_URL and SALESFORCE_ACCESS_TOKEN, "
        "or SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET and SALESFORCE_DOMAIN "
        "(docs/sources/salesforce.md)"
    )


def pubsub_auth(sf: Salesforce, tenant_id: str | None = None) -> PubSubAuth:
    """The Pub/Sub API's credentials for this session; the org id is asked for if not given."""
    if tenant_id is None:
        tenant_id = sf.query("SELECT Id FROM Organization")["records"][0]["Id"]
    return PubSubAuth(sf.session_id, f"https://{sf.sf_instance}", tenant_id)


def cursor_folder() -> Path:
    """Where the sources keep their cursors: ``$REVORCH_HOME/sources``."""
    return settings.revorch_home() / "sources"


def sync(
    config: SalesforceSettings,
    zone: LandingZone,
    *,
    cdc_seconds: float | None = None,
    cdc_idle_seconds: float = 10.0,
    folder: Path | None = None,
    session: requests.Session | None = None,
) -> tuple[PollSummary, CdcSummary | None]:
    """Poll every object once over REST; then, if ``cdc_seconds`` is given, take change
    events for at most that long (stopping sooner once none came for ``cdc_idle_seconds``)."""
    folder = folder or cursor_folder()
    sf = connect(config, session)
    poller = SalesforcePoller(
        sf, zone, CursorFile(folder / "salesforce-rest.json"), sobjects=config.sobjects
    )
    polled = poller.poll()
    if cdc_seconds is None:
        return polled, None
    with pubsub_channel(config.pubsub_endpoint, tls=config.pubsub_tls) as channel:
        subscriber = ChangeEventSubscriber(
            channel,
            pubsub_auth(sf, config.tenant_id),
            zone,
            CursorFile(folder / "salesforce-cdc.json"),
            poller,
            topic=config.topic,
            own_change_origin=config.own_change_origin or None,
        )
        return polled, subscriber.run(idle_seconds=cdc_idle_seconds, max_seconds=cdc_seconds)
