"""HubSpot records as landing-zone events: which properties Revorch reads, under which
column names, and the marker Revorch's own writes carry so they are never read back in.

The one mapping of HubSpot properties: the poller (records from the search API) and the
webhook receiver (``revorch.sources.hubspot.webhook``, one property change at a time) both
read it, so a property lands the same way whether it was polled or pushed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

SOURCE = "hubspot"
# Written by the write-back on every record it changes, with the action's id; a custom
# property the portal needs (docs/sources/hubspot.md). Never landed as a change.
MARKER = "revorch_action_id"


# HubSpot's change source (webhook ``changeSource``, property history ``sourceType``) for a
# change a workflow made; its ``sourceId`` names the workflow.
WORKFLOW_SOURCE = "AUTOMATION_PLATFORM"


def change_source(source_type: object, source_id: object) -> str:
    """The landing event's ``source`` for a change HubSpot attributes to ``source_type`` and
    ``source_id``: the field the estate audit matches an automation's ``source_key`` with
    (docs/estate.md, "Attribution").

    A workflow's change is ``hubspot:<sourceId>``, which for a workflow is its flow id, the
    estate's ``automation_id`` of an imported HubSpot workflow (``hubspot:585051946``); any
    other attributed change is ``hubspot:<type>:<sourceId>`` (``hubspot:INTEGRATION:31234``
    for an app, ``hubspot:CRM_UI:userId:12345`` for a person), which an inventory row's
    ``source_key`` can name; a change HubSpot attributes to nothing is plain ``hubspot``."""
    kind = str(source_type or "").strip()
    ident = str(source_id or "").strip()
    if not kind or not ident:
        return SOURCE
    if kind == WORKFLOW_SOURCE:
        return f"{SOURCE}:{ident}"
    return f"{SOURCE}:{kind}:{ident}"


def latest_change_source(history: dict[str, list[dict]]) -> str:
    """The ``source`` of a polled record version: who made the newest change among its
    properties' histories (``propertiesWithHistory``: ``timestamp``, ``source_type``,
    ``source_id`` per version), the change that made this version; ``hubspot`` when there is
    no history."""
    versions = [v for values in history.values() for v in values or () if v.get("timestamp")]
    if not versions:
        return SOURCE
    newest = max(versions, key=lambda v: to_millis(v["timestamp"]))
    return change_source(newest.get("source_type"), newest.get("source_id"))


def _lower(value: str) -> str:
    return value.lower()


def _moment(value: str) -> str:
    # The search API answers ISO 8601 text, webhooks send epoch milliseconds.
    return iso(int(value)) if value.isdigit() else value


def _date(value: str) -> str:
    # HubSpot's closedate is a datetime; Revorch's close_date is a date.
    return _moment(value)[:10]


# HubSpot's two default deal types; Revorch tells renewals from expansions, HubSpot does not,
# so an existing customer's deal counts as an expansion unless the portal sends "renewal".
DEAL_TYPES = {"newbusiness": "new_business", "existingbusiness": "expansion"}
# The stages of HubSpot's default ticket pipeline (their ids) as Revorch's ticket statuses;
# another pipeline's stage ids land as they are.
TICKET_STATUSES = {"1": "new", "2": "waiting", "3": "open", "4": "closed"}
# HubSpot's default pipeline's closed stages; HubSpot sets `closedate` when a deal enters one.
CLOSED_DEAL_STAGES = frozenset({"closedwon", "closedlost"})


def deal_closed_at(stage: object, closedate: object, at: str) -> str | None:
    """When a deal in ``stage`` closed (stages and onboarding read it), the one rule for polled
    and pushed deals: None while open; else HubSpot's ``closedate`` (which HubSpot sets to the
    moment a deal is moved to closed won or lost), or ``at``, the moment of the change that
    closed it, when the change does not carry ``closedate`` (a webhook's stage change)."""
    if stage not in CLOSED_DEAL_STAGES:
        return None
    return _moment(str(closedate)) if closedate else at


@dataclass(frozen=True)
class ObjectMapping:
    """One HubSpot object type: its API name, last-modified property, the HubSpot properties
    Revorch maps to its own columns, and the associations that become references."""

    hubspot: str  # the API's object type: contacts, companies, deals
    revorch: str  # the landing zone's object_type
    last_modified: str
    columns: dict[str, str]  # HubSpot property -> Revorch column
    convert: dict[str, Callable[[str], object]] = field(default_factory=dict)
    # HubSpot object type associated -> Revorch column holding its id (the primary one).
    associations: dict[str, str] = field(default_factory=dict)

    def properties(self, extra: tuple[str, ...] = ()) -> list[str]:
        """The properties to ask HubSpot for (mapped, extra kept as they are, the marker)."""
        return sorted({*self.columns, *extra, self.last_modified, MARKER})


CONTACTS = ObjectMapping(
    "contacts",
    "contact",
    "lastmodifieddate",
    {
        "email": "email",
        "firstname": "first_name",
        "lastname": "last_name",
        "jobtitle": "job_title",
        "phone": "phone",
        "lifecyclestage": "lifecycle_stage",
        "hs_lead_status": "lead_status",
        "hs_analytics_source": "lead_source",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
        # The primary company, as webhooks announce it (the poller reads the associations).
        "associatedcompanyid": "company_id",
    },
    # HubSpot's enumeration values are upper case; config/lifecycle.yaml names them lower case.
    {"hs_lead_status": _lower, "hs_analytics_source": _lower, "createdate": _moment},
    {"companies": "company_id"},
)
COMPANIES = ObjectMapping(
    "companies",
    "company",
    "hs_lastmodifieddate",
    {
        "name": "name",
        "domain": "domain",
        "industry": "industry",
        "numberofemployees": "employees",
        "annualrevenue": "annual_revenue",
        "country": "country",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
    },
    {"createdate": _moment},
)
DEALS = ObjectMapping(
    "deals",
    "deal",
    "hs_lastmodifieddate",
    {
        "dealname": "name",
        "dealstage": "stage",
        "amount": "amount",
        "deal_currency_code": "currency",
        "closedate": "close_date",
        "dealtype": "deal_type",
        "closed_lost_reason": "lost_reason",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
    },
    {"closedate": _date, "dealtype": lambda v: DEAL_TYPES.get(v, v), "createdate": _moment},
    {"companies": "company_id", "contacts": "contact_id"},
)
TICKETS = ObjectMapping(
    "tickets",
    "ticket",
    "hs_lastmodifieddate",
    {
        "subject": "subject",
        "content": "body",
        "hs_ticket_category": "category",
        "hs_ticket_priority": "priority",
        "hs_pipeline_stage": "status",
        "hubspot_owner_id": "owner_id",
        "createdate": "created_at",
        "closed_date": "closed_at",
    },
    {
        # LOW, MEDIUM, HIGH, URGENT; config/lifecycle.yaml names them lower case.
        "hs_ticket_priority": _lower,
        "hs_pipeline_stage": lambda v: TICKET_STATUSES.get(v, v),
        "createdate": _moment,
        "closed_date": _moment,
    },
    {"companies": "company_id", "contacts": "contact_id"},
)
OBJECTS: dict[str, ObjectMapping] = {m.hubspot: m for m in (CONTACTS, COMPANIES, DEALS, TICKETS)}
BY_REVORCH_TYPE: dict[str, ObjectMapping] = {m.revorch: m for m in OBJECTS.values()}
# Revorch column -> HubSpot property, for the write-back.
HUBSPOT_PROPERTY = {
    m.revorch: {column: prop for prop, column in m.columns.items()} for m in OBJECTS.values()
}
# Association type ids HubSpot defines as "Primary" (contact->company 1, deal->company 5,
# ticket->company 26): when a record has several, the primary one is Revorch's reference.
PRIMARY_TYPE_IDS = frozenset({1, 5, 26})


def to_millis(value: str | datetime) -> int:
    """Epoch milliseconds of a HubSpot timestamp (ISO 8601 text or a datetime)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def event_id(object_type: str, object_id: str, millis: int, op: str = "upsert") -> str:
    """The same record at the same last-modified instant is the same event, whoever reads it
    and however often: a re-poll is a duplicate the change log drops."""
    kind = "deleted:" if op == "delete" else ""
    return f"{SOURCE}:{object_type}:{object_id}:{kind}{millis}"


def upsert_event(
    mapping: ObjectMapping,
    record_id: str,
    modified_ms: int,
    properties: dict[str, object],
    associated: dict[str, str | None],
    *,
    extra: tuple[str, ...] = (),
    skip: frozenset[str] = frozenset(),
) -> dict:
    """A landing-zone upsert: mapped properties under Revorch's names, ``extra`` ones as they
    are, associations as references. ``skip`` names HubSpot properties that hold what Revorch
    wrote itself: they are left out, so a write-back never comes back as a change."""
    props: dict[str, object] = {}
    for name, column in mapping.columns.items():
        if name in skip or name not in properties:
            continue
        value = properties[name]
        if value == "":  # HubSpot sends "" for a cleared field
            value = None
        if value is not None and name in mapping.convert:
            value = mapping.convert[name](str(value))
        props[column] = value
    for name in extra:
        if name in properties and name not in skip and name != MARKER:
            props[name] = properties[name]
    props.update(associated)
    if mapping.revorch == "deal" and "stage" in props:
        closedate = None if "closedate" in skip else properties.get("closedate")
        props["closed_at"] = deal_closed_at(props["stage"], closedate, iso(modified_ms))
    return {
        "event_id": event_id(mapping.revorch, record_id, modified_ms),
        "object_type": mapping.revorch,
        "object_id": record_id,
        "occurred_at": iso(modified_ms),
        "op": "upsert",
        "properties": props,
    }


def delete_event(object_type: str, record_id: str, archived_ms: int) -> dict:
    return {
        "event_id": event_id(object_type, record_id, archived_ms, "delete"),
        "object_type": object_type,
        "object_id": record_id,
        "occurred_at": iso(archived_ms),
        "op": "delete",
    }


def owner_event(owner: dict) -> dict:
    """A HubSpot owner (``/crm/v3/owners``) as a landing-zone event."""
    modified = to_millis(owner["updated_at"])
    if owner.get("archived"):
        return delete_event("owner", str(owner["id"]), modified)
    return {
        "event_id": event_id("owner", str(owner["id"]), modified),
        "object_type": "owner",
        "object_id": str(owner["id"]),
        "occurred_at": iso(modified),
        "op": "upsert",
        "properties": {
            "email": owner.get("email"),
            "first_name": owner.get("first_name"),
            "last_name": owner.get("last_name"),
            "is_active": not owner.get("archived", False),
            "created_at": iso(to_millis(owner["created_at"])),
        },
    }


def primary_association(targets: list[dict]) -> str | None:
    """The associated id Revorch keeps: the primary one, else the smallest id."""
    if not targets:
        return None
    primary = [
        t
        for t in targets
        if any(a.get("type_id") in PRIMARY_TYPE_IDS for a in t.get("association_types") or [])
    ]
    chosen = primary or targets
    return str(min(chosen, key=lambda t: int(t["to_object_id"]))["to_object_id"])
