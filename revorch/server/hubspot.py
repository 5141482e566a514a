"""HubSpot webhook events, as landing-zone change events (docs/sources/webhooks.md).

HubSpot posts a JSON array of events such as::

    {"eventId": 3816279340, "subscriptionType": "contact.propertyChange", "portalId": 33,
     "objectId": 1246965, "propertyName": "lifecyclestage", "propertyValue": "subscriber",
     "occurredAt": 1462216307945, "attemptNumber": 0, "changeSource": "CRM", ...}

Each becomes at most one landing event (docs/landing_zone.md). HubSpot retries an event with
a higher ``attemptNumber`` and does not promise that ``eventId`` is unique, so the event id
is built from the fields that identify the change and never from ``attemptNumber``: a retried
delivery lands an event ingestion already has, and is counted as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

# HubSpot's object names in subscription types -> Revorch's object types.
OBJECT_TYPES = {"contact": "contact", "company": "company", "deal": "deal", "ticket": "ticket"}
# Generic subscriptions (`object.creation`, `object.propertyChange`, ...) name the object by
# its type id instead: HubSpot's ids of its standard objects.
OBJECT_TYPE_IDS = {"0-1": "contact", "0-2": "company", "0-3": "deal", "0-5": "ticket"}

# HubSpot's internal property names -> Revorch's columns (docs/schema.md). A property that is
# not listed is kept under its HubSpot name, as a custom property of the change.
PROPERTY_COLUMNS: dict[str, dict[str, str]] = {
    "contact": {
        "email": "email",
        "firstname": "first_name",
        "lastname": "last_name",
        "jobtitle": "job_title",
        "phone": "phone",
        "lifecyclestage": "lifecycle_stage",
        "hs_lead_status": "lead_status",
        "hs_analytics_source": "lead_source",
        "hubspot_owner_id": "owner_id",
        "associatedcompanyid": "company_id",  # the contact's primary company
        "createdate": "created_at",
    },
    "company": {
        "name": "name",
        "domain": "domain",
        "industry": "industry",
        "numberofemployees": "employees",
        "annualrevenue": "annual_revenue",
        "country": "country",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
    },
    "deal": {
        "dealname": "name",
        "dealstage": "stage",
        "dealtype": "deal_type",
        "amount": "amount",
        "deal_currency_code": "currency",
        "closedate": "close_date",
        "closed_lost_reason": "lost_reason",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
    },
    "ticket": {
        "subject": "subject",
        "content": "body",
        "hs_ticket_category": "category",
        "hs_ticket_priority": "priority",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
        "closed_date": "closed_at",
    },
}

# HubSpot's enumeration values, in upper case (hs_lead_status, hs_analytics_source), read as
# the lower-case values Revorch's config names (config/lifecycle.yaml: unqualified, bad_timing).
_LOWER_CASE = {"lead_status", "lead_source"}
# HubSpot's two default deal types; Revorch tells renewals from expansions, HubSpot does not,
# so an existing customer's deal counts as an expansion unless the portal sends "renewal".
DEAL_TYPES = {"newbusiness": "new_business", "existingbusiness": "expansion"}
CLOSED_DEAL_STAGES = {"closedwon", "closedlost"}
# Columns that hold a moment (HubSpot sends epoch milliseconds) or a calendar day.
_TIMESTAMPS = {"created_at", "closed_at"}
_DATES = {"close_date"}

# associationType -> (object type of the record that holds the reference, its column,
# whether the record is the "from" side). Revorch keeps one company and one contact per
# record, so only these references are kept; other associations are skipped.
ASSOCIATIONS: dict[str, tuple[str, str, bool]] = {
    "CONTACT_TO_COMPANY": ("contact", "company_id", True),
    "COMPANY_TO_CONTACT": ("contact", "company_id", False),
    "DEAL_TO_COMPANY": ("deal", "company_id", True),
    "COMPANY_TO_DEAL": ("deal", "company_id", False),
    "DEAL_TO_CONTACT": ("deal", "contact_id", True),
    "CONTACT_TO_DEAL": ("deal", "contact_id", False),
    "TICKET_TO_COMPANY": ("ticket", "company_id", True),
    "COMPANY_TO_TICKET": ("ticket", "company_id", False),
    "TICKET_TO_CONTACT": ("ticket", "contact_id", True),
    "CONTACT_TO_TICKET": ("ticket", "contact_id", False),
}


class MalformedEvent(ValueError):
    """A HubSpot event without the fields its subscription type needs."""


@dataclass(frozen=True)
class Mapped:
    """The landing events of one HubSpot request, and the events it did not keep."""

    events: list[dict]
    skipped: int


def to_landing_events(payload: object) -> Mapped:
    """The landing events for a parsed HubSpot request body (a JSON array of events).

    Raises :class:`MalformedEvent` if the body is not an array of objects or an event lacks
    a field its subscription type needs; event types Revorch does not use are skipped.
    """
    if not isinstance(payload, list):
        raise MalformedEvent("the body must be a JSON array of HubSpot events")
    events, skipped = [], 0
    for position, event in enumerate(payload):
        if not isinstance(event, dict):
            raise MalformedEvent(f"event {position} is not an object")
        try:
            landed = _landing_event(event)
        except MalformedEvent as error:
            raise MalformedEvent(f"event {position}: {error}") from None
        if landed is None:
            skipped += 1
        else:
            events.append(landed)
    return Mapped(events, skipped)


def _landing_event(event: dict) -> dict | None:
    subscription = _text(event, "subscriptionType")
    object_name, _, change = subscription.partition(".")
    if object_name == "object":
        object_type = OBJECT_TYPE_IDS.get(str(event.get("objectTypeId")))
    else:
        object_type = OBJECT_TYPES.get(object_name)
    handler = _HANDLERS.get(change)
    if object_type is None or handler is None or (object_name, change) == ("object", _ASSOC):
        return None  # generic association events carry other fields: not read yet
    occurred_ms = _integer(event, "occurredAt")
    landed = handler(event, object_type, occurred_ms)
    if landed is None:
        return None
    record_type, record_id, op, properties, at_ms = landed
    out = {
        "event_id": event_id(event),
        "object_type": record_type,
        "object_id": record_id,
        "occurred_at": _iso_timestamp(at_ms),
        "op": op,
        "source": "hubspot",
    }
    if op == "upsert":
        out["properties"] = properties
    return out


def event_id(event: dict) -> str:
    """``hubspot:`` and the fields that identify one change, whatever its delivery attempt.

    ``eventId`` alone may repeat, so the portal, subscription type, record (or both records
    of an association), property and the moment are part of it; ``attemptNumber`` is not.
    """
    parts = [
        event.get("portalId"),
        event.get("subscriptionType"),
        event.get("objectTypeId"),
        event.get("objectId"),
        event.get("propertyName"),
        event.get("fromObjectId"),
        event.get("toObjectId"),
        event.get("associationType"),
        event.get("associationRemoved"),
        event.get("occurredAt"),
        event.get("eventId"),
    ]
    return "hubspot:" + ":".join("" if part is None else str(part) for part in parts)


def _created(event: dict, object_type: str, at_ms: int):
    created = {"created_at": _iso_timestamp(at_ms)}
    return object_type, str(_integer(event, "objectId")), "upsert", created, at_ms


def _restored(event: dict, object_type: str, at_ms: int):
    # An upsert after a delete makes the record current again (docs/schema.md, `_deleted`).
    return object_type, str(_integer(event, "objectId")), "upsert", {}, at_ms


def _deleted(event: dict, object_type: str, at_ms: int):
    return object_type, str(_integer(event, "objectId")), "delete", {}, at_ms


def _property_changed(event: dict, object_type: str, at_ms: int):
    name = _text(event, "propertyName")
    if "propertyValue" not in event:
        raise MalformedEvent("propertyChange without propertyValue")
    raw = event["propertyValue"]
    column = PROPERTY_COLUMNS[object_type].get(name)
    properties = {column or name: _value(column, raw)}
    if column == "stage" and object_type == "deal":
        # The moment a deal closed is the moment its stage became closed (stages read it).
        closed = properties["stage"] in CLOSED_DEAL_STAGES
        properties["closed_at"] = _iso_timestamp(at_ms) if closed else None
    return object_type, str(_integer(event, "objectId")), "upsert", properties, at_ms


def _association_changed(event: dict, object_type: str, at_ms: int):
    kept = ASSOCIATIONS.get(_text(event, "associationType"))
    if kept is None:
        return None
    holder_type, column, holder_is_from = kept
    from_id, to_id = _integer(event, "fromObjectId"), _integer(event, "toObjectId")
    holder, other = (from_id, to_id) if holder_is_from else (to_id, from_id)
    removed = event.get("associationRemoved")
    if not isinstance(removed, bool):
        raise MalformedEvent("associationChange without a boolean associationRemoved")
    if not removed and event.get("isPrimaryAssociation") is False:
        return None  # Revorch keeps the primary company of a record, not every other one
    if removed:
        # Dated a millisecond earlier, so that when HubSpot moves a record from one company
        # to another in one change (a removal and an addition at the same instant), the
        # addition is the newer value.
        return holder_type, str(holder), "upsert", {column: None}, at_ms - 1
    return holder_type, str(holder), "upsert", {column: str(other)}, at_ms


_ASSOC = "associationChange"
_HANDLERS: dict[str, Callable] = {
    "creation": _created,
    "restore": _restored,
    "deletion": _deleted,
    "privacyDeletion": _deleted,
    "propertyChange": _property_changed,
    _ASSOC: _association_changed,
}


def _value(column: str | None, raw: object) -> object:
    """A HubSpot property value (always sent as text) as Revorch's column takes it."""
    if raw is None or raw == "":
        return None  # HubSpot sends an empty value when a property is cleared
    if column is None or not isinstance(raw, str):
        return raw
    if column in _LOWER_CASE:
        return raw.lower()
    if column == "deal_type":
        return DEAL_TYPES.get(raw, raw)
    if column in _TIMESTAMPS and raw.isdigit():
        return _iso_timestamp(int(raw))
    if column in _DATES and raw.isdigit():
        return _iso_timestamp(int(raw))[:10]
    return raw


def _iso_timestamp(epoch_ms: int) -> str:
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError) as error:
        raise MalformedEvent(f"{epoch_ms} is not a time in epoch milliseconds") from error
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(event: dict, name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{name} must be a non-empty string")
    return value


def _integer(event: dict, name: str) -> int:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{name} must be an integer")
    return value
