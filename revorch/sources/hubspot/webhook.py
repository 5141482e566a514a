"""HubSpot webhook events, as landing-zone change events (docs/sources/webhooks.md).

HubSpot posts a JSON array of events such as::

    {"eventId": 3816279340, "subscriptionType": "contact.propertyChange", "portalId": 33,
     "objectId": 1246965, "propertyName": "lifecyclestage", "propertyValue": "subscriber",
     "occurredAt": 1462216307945, "attemptNumber": 0, "changeSource": "CRM", ...}

Each becomes at most one landing event (docs/landing_zone.md). HubSpot retries an event with
a higher ``attemptNumber`` and does not promise that ``eventId`` is unique, so the event id
is built from the fields that identify the change and never from ``attemptNumber``: a retried
delivery lands an event ingestion already has, and is counted as a duplicate.

Properties map as the poller maps them (:mod:`revorch.sources.hubspot.mapping`). A change of
Revorch's marker property, or of a property that still holds the value Revorch last wrote to it
(:mod:`revorch.sources.hubspot.own_writes`), lands nothing: a write-back's own change, pushed
back by HubSpot, is not news.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from revorch.sources.hubspot.mapping import (
    BY_REVORCH_TYPE,
    MARKER,
    ObjectMapping,
    change_source,
    deal_closed_at,
    iso,
)
from revorch.sources.hubspot.own_writes import OwnWrites, still_ours

# Subscription types name HubSpot's objects as Revorch names its object types (contact, deal).
# Generic subscriptions (`object.creation`, `object.propertyChange`, ...) name the object by
# its type id instead: HubSpot's ids of its standard objects.
OBJECT_TYPE_IDS = {"0-1": "contact", "0-2": "company", "0-3": "deal", "0-5": "ticket"}

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


# Generic association events (`object.associationChange`) name the two records' types by id
# and the association by HubSpot's type id instead of by name. Of the HubSpot-defined types,
# these mark the primary company (docs: CRM associations, "association type id values");
# the unlabeled company types (279, 280, 339-342) and labels (USER_DEFINED) are not it.
PRIMARY_COMPANY_TYPE_IDS = frozenset({1, 2, 5, 6, 25, 26})


class MalformedEvent(ValueError):
    """A HubSpot event without the fields its subscription type needs."""


@dataclass(frozen=True)
class Mapped:
    """The landing events of one HubSpot request, and the events it did not keep."""

    events: list[dict]
    skipped: int


def to_landing_events(payload: object, own_writes: OwnWrites | None = None) -> Mapped:
    """The landing events for a parsed HubSpot request body (a JSON array of events).

    Raises :class:`MalformedEvent` if the body is not an array of objects or an event lacks
    a field its subscription type needs; event types Revorch does not use, changes of the
    marker and property changes that still hold what Revorch wrote (``own_writes``) are
    skipped.
    """
    if not isinstance(payload, list):
        raise MalformedEvent("the body must be a JSON array of HubSpot events")
    mapped: list[tuple[dict, tuple[str, str, str, object] | None]] = []
    for position, event in enumerate(payload):
        if not isinstance(event, dict):
            raise MalformedEvent(f"event {position} is not an object")
        try:
            landed = _landing_event(event)
        except MalformedEvent as error:
            raise MalformedEvent(f"event {position}: {error}") from None
        if landed is not None:
            mapped.append(landed)
    ours = _own_values([change for _, change in mapped if change], own_writes)
    events = [
        out
        for out, change in mapped
        if change is None or change[2] not in still_ours({change[2]: change[3]}, ours[change[:2]])
    ]
    return Mapped(events, len(payload) - len(events))


def _own_values(
    changes: list[tuple[str, str, str, object]], own_writes: OwnWrites | None
) -> defaultdict[tuple[str, str], dict[str, object]]:
    """(HubSpot object type, id) -> what Revorch last wrote to its properties."""
    ours: defaultdict[tuple[str, str], dict[str, object]] = defaultdict(dict)
    if own_writes is None:
        return ours
    ids: defaultdict[str, set[str]] = defaultdict(set)
    for hubspot_type, record_id, _, _ in changes:
        ids[hubspot_type].add(record_id)
    for hubspot_type, records in ids.items():
        for record_id, written in own_writes.written(hubspot_type, sorted(records)).items():
            ours[hubspot_type, record_id] = written
    return ours


def _landing_event(event: dict) -> tuple[dict, tuple[str, str, str, object] | None] | None:
    """The landing event, and for a property change what changed (HubSpot object type, id,
    property, value), or None for an event Revorch does not keep."""
    subscription = _text(event, "subscriptionType")
    object_name, _, change = subscription.partition(".")
    if object_name == "object":
        object_type = OBJECT_TYPE_IDS.get(str(event.get("objectTypeId")))
    else:
        object_type = object_name if object_name in BY_REVORCH_TYPE else None
    handler = _HANDLERS.get(change)
    if (object_name, change) == ("object", _ASSOC):
        # Named by its two sides, not by objectTypeId.
        object_type = OBJECT_TYPE_IDS.get(str(event.get("fromObjectTypeId")))
        handler = _generic_association_changed
    if object_type is None or handler is None:
        return None
    occurred_ms = _integer(event, "occurredAt")
    landed = handler(event, BY_REVORCH_TYPE[object_type], occurred_ms)
    if landed is None:
        return None
    record_type, record_id, op, properties, at_ms = landed
    out = {
        "event_id": event_id(event),
        "object_type": record_type,
        "object_id": record_id,
        "occurred_at": _iso_timestamp(at_ms),
        "op": op,
        # Who made the change (a workflow, an app, a person), for the estate audit.
        "source": change_source(event.get("changeSource"), event.get("sourceId")),
    }
    if op == "upsert":
        out["properties"] = properties
    if change != "propertyChange":
        return out, None
    hubspot_type = BY_REVORCH_TYPE[object_type].hubspot
    return out, (hubspot_type, record_id, event["propertyName"], event["propertyValue"])


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
    if "associationTypeId" in event:  # generic association events name the type by id
        parts += [event.get("fromObjectTypeId"), event["associationTypeId"]]
    return "hubspot:" + ":".join("" if part is None else str(part) for part in parts)


def _created(event: dict, mapping: ObjectMapping, at_ms: int):
    created = {"created_at": _iso_timestamp(at_ms)}
    return mapping.revorch, str(_integer(event, "objectId")), "upsert", created, at_ms


def _restored(event: dict, mapping: ObjectMapping, at_ms: int):
    # An upsert after a delete makes the record current again (docs/schema.md, `_deleted`).
    return mapping.revorch, str(_integer(event, "objectId")), "upsert", {}, at_ms


def _deleted(event: dict, mapping: ObjectMapping, at_ms: int):
    return mapping.revorch, str(_integer(event, "objectId")), "delete", {}, at_ms


def _property_changed(event: dict, mapping: ObjectMapping, at_ms: int):
    name = _text(event, "propertyName")
    if "propertyValue" not in event:
        raise MalformedEvent("propertyChange without propertyValue")
    if name == MARKER:
        return None  # Revorch's own bookkeeping on the record, never a change
    # Mapped as the poller maps it; a property not in the mapping keeps its HubSpot name,
    # as a custom property of the change (the portal's subscriptions chose it).
    column = mapping.columns.get(name, name)
    properties = {column: _value(mapping, name, event["propertyValue"])}
    if column == "stage" and mapping.revorch == "deal":
        # A stage change carries no closedate: the deal closed at the change.
        properties["closed_at"] = deal_closed_at(properties["stage"], None, _iso_timestamp(at_ms))
    return mapping.revorch, str(_integer(event, "objectId")), "upsert", properties, at_ms


def _association_changed(event: dict, mapping: ObjectMapping, at_ms: int):
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


def _generic_association_changed(event: dict, mapping: ObjectMapping, at_ms: int):
    """An ``object.associationChange``: as a legacy association event once its type ids are
    names; of company associations only the primary one (by its type id) is kept."""
    from_type = OBJECT_TYPE_IDS.get(str(event.get("fromObjectTypeId")))
    to_type = OBJECT_TYPE_IDS.get(str(event.get("toObjectTypeId")))
    if from_type is None or to_type is None:
        return None  # an object Revorch does not keep (a call, a line item, ...)
    if event.get("associationCategory") != "HUBSPOT_DEFINED":
        return None  # a label the portal defined, beside the association itself
    type_id = _integer(event, "associationTypeId")
    if "company" in (from_type, to_type) and type_id not in PRIMARY_COMPANY_TYPE_IDS:
        return None  # Revorch keeps the primary company of a record, not every other one
    named = {**event, "associationType": f"{from_type}_TO_{to_type}".upper()}
    return _association_changed(named, mapping, at_ms)


_ASSOC = "associationChange"
_HANDLERS: dict[str, Callable] = {
    "creation": _created,
    "restore": _restored,
    "deletion": _deleted,
    "privacyDeletion": _deleted,
    "propertyChange": _property_changed,
    _ASSOC: _association_changed,
}


def _value(mapping: ObjectMapping, name: str, raw: object) -> object:
    """A HubSpot property value (always sent as text) as Revorch's column takes it."""
    if raw is None or raw == "":
        return None  # HubSpot sends an empty value when a property is cleared
    convert = mapping.convert.get(name)
    if convert is None:
        return raw
    try:
        return convert(str(raw))
    except (OverflowError, OSError, ValueError) as error:
        raise MalformedEvent(f"{name}: {raw!r} is not a value HubSpot sends") from error


def _iso_timestamp(epoch_ms: int) -> str:
    try:
        return iso(epoch_ms)
    except (OverflowError, OSError, ValueError) as error:
        raise MalformedEvent(f"{epoch_ms} is not a time in epoch milliseconds") from error


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
