"""Salesforce as a source: a REST poller and a Change Data Capture subscriber, both writing
only to the landing zone (docs/sources/salesforce.md)."""

from revorch.sources.salesforce.cdc import (
    ALL_CHANGE_EVENTS,
    PUBSUB_ENDPOINT,
    CdcSummary,
    ChangeEventSubscriber,
    PubSubAuth,
    pubsub_channel,
)
from revorch.sources.salesforce.cursor import CursorFile
from revorch.sources.salesforce.mapping import SOBJECTS, ValueMaps
from revorch.sources.salesforce.poller import PollSummary, SalesforcePoller

__all__ = [
    "ALL_CHANGE_EVENTS",
    "PUBSUB_ENDPOINT",
    "SOBJECTS",
    "CdcSummary",
    "ChangeEventSubscriber",
    "CursorFile",
    "PollSummary",
    "PubSubAuth",
    "SalesforcePoller",
    "ValueMaps",
    "pubsub_channel",
]
