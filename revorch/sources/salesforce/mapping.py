"""Salesforce records as landing-zone change events (docs/sources/salesforce.md, "Mapping").

One mapping serves the REST poller (SOQL records) and the Change Data Capture subscriber
(decoded change events, compound fields flattened first), so a change reads the same
whichever way it came. Mapped fields become Revorch's columns (docs/schema.md); every other
field is kept under its Salesforce API name, as a custom property.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

# Salesforce object -> (Revorch object type, {Salesforce field: Revorch property}).
FIELDS: dict[str, tuple[str, dict[str, str]]] = {
    "User": (
        "owner",
        {
            "Email": "email",
            "FirstName": "first_name",
            "LastName": "last_name",
            "IsActive": "is_active",
            "CreatedDate": "created_at",
        },
    ),
    "Account": (
        "company",
        {
            "Name": "name",
            "Website": "domain",
            "Industry": "industry",
            "NumberOfEmployees": "employees",
            "AnnualRevenue": "annual_revenue",
            "BillingCountry": "country",
            "OwnerId": "owner_id",
            "CreatedDate": "created_at",
        },
    ),
    "Contact": (
        "contact",
        {
            "AccountId": "company_id",
            "OwnerId": "owner_id",
            "Email": "email",
            "FirstName": "first_name",
            "LastName": "last_name",
            "Title": "job_title",
            "Phone": "phone",
            "LeadSource": "lead_source",
            "CreatedDate": "created_at",
        },
    ),
    "Lead": (
        "contact",
        {
            "OwnerId": "owner_id",
            "Email": "email",
            "FirstName": "first_name",
            "LastName": "last_name",
            "Title": "job_title",
            "Phone": "phone",
            "LeadSource": "lead_source",
            "Status": "lead_status",
            "CreatedDate": "created_at",
        },
    ),
    "Opportunity": (
        "deal",
        {
            "AccountId": "company_id",
            "ContactId": "contact_id",
            "OwnerId": "owner_id",
            "Name": "name",
            "Type": "deal_type",
            "StageName": "stage",
            "Amount": "amount",
            "CurrencyIsoCode": "currency",
            "CloseDate": "close_date",
            "CreatedDate": "created_at",
        },
    ),
    "Task": (
        "activity",
        {
            "WhoId": "contact_id",
            "AccountId": "company_id",
            "OwnerId": "owner_id",
            "Subject": "subject",
            "Description": "body",
            "TaskSubtype": "activity_type",
            "CreatedDate": "activity_at",
        },
    ),
}
SOBJECTS = tuple(FIELDS)

# Bookkeeping Salesforce keeps on every record: not a property of the customer.
SYSTEM_FIELDS = frozenset(
    {
        "attributes",
        "Id",
        "IsDeleted",
        "SystemModstamp",
        "LastModifiedDate",
        "LastModifiedById",
        "CreatedById",
        "LastViewedDate",
        "LastReferencedDate",
        "LastActivityDate",
        "PhotoUrl",
        "Name",  # on a Contact or Lead, FirstName + LastName again (mapped where it is its own)
    }
)
_TIMESTAMPS = frozenset({"created_at", "activity_at"})
_DATES = frozenset({"close_date"})


@dataclass(frozen=True)
class ValueMaps:
    """How Salesforce picklist values read in Revorch (the defaults are Salesforce's own
    standard values; an org with its own values passes its maps)."""

    # Lead Status -> properties it sets. A status that means a lifecycle stage sets
    # lifecycle_stage too ("MQL": {"lifecycle_stage": "marketingqualifiedlead"}).
    lead_status: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {
            "Open - Not Contacted": {"lead_status": "new"},
            "Working - Contacted": {"lead_status": "attempted_to_contact"},
            "Closed - Not Converted": {"lead_status": "unqualified"},
            "Closed - Converted": {"lead_status": "converted"},
        }
    )
    # A Contact field holding the lifecycle stage, if the org keeps one (standard Salesforce
    # has none), and what its values mean.
    contact_stage_field: str | None = None
    contact_stages: Mapping[str, str] = field(default_factory=dict)
    opportunity_stage: Mapping[str, str] = field(
        default_factory=lambda: {
            "Prospecting": "appointmentscheduled",
            "Qualification": "qualifiedtobuy",
            "Needs Analysis": "qualifiedtobuy",
            "Value Proposition": "presentationscheduled",
            "Id. Decision Makers": "decisionmakerboughtin",
            "Perception Analysis": "decisionmakerboughtin",
            "Proposal/Price Quote": "contractsent",
            "Negotiation/Review": "contractsent",
            "Closed Won": "closedwon",
            "Closed Lost": "closedlost",
        }
    )
    opportunity_type: Mapping[str, str] = field(
        default_factory=lambda: {
            "New Customer": "new_business",
            "New Business": "new_business",
            "Existing Customer - Upgrade": "expansion",
            "Existing Customer - Replacement": "renewal",
            "Existing Customer - Downgrade": "renewal",
            "Renewal": "renewal",
        }
    )
    task_subtype: Mapping[str, str] = field(
        default_factory=lambda: {
            "Call": "call",
            "Email": "email_sent",
            "ListEmail": "email_sent",
            "Task": "task",
        }
    )


# The client id Salesforce's own user interface sends: a person's edit, told apart by its user.
SALESFORCE_UI_CLIENT = "SfdcInternalAPI"


def change_source(change_origin: object = None, user_id: object = None) -> str:
    """The landing event's ``source`` for a change: who made it, the field the estate audit
    matches an automation's ``source_key`` with (docs/estate.md, "Attribution").

    ``salesforce:client:<id>`` when the API call named its client (a change event's
    ``changeOrigin``, ``com/salesforce/api/rest/62.0;client=<id>``, set by the caller's
    ``Sforce-Call-Options`` header); else ``salesforce:user:<id>``, the user who made it (the
    change event header's ``commitUser``, a queried record's ``LastModifiedById``); else
    ``salesforce``. Salesforce's own UI (client ``SfdcInternalAPI/``) counts as its user. A
    record-triggered flow runs as the user whose change triggered it, so
    Salesforce names no flow: an automation is told apart by its own integration user or
    client id (an inventory row's ``source_key``)."""
    client = str(change_origin or "").partition(";client=")[2].split(";")[0].strip()
    if client and not client.startswith(SALESFORCE_UI_CLIENT):
        return f"salesforce:client:{client}"
    user = str(user_id or "").strip()
    return f"salesforce:user:{user}" if user else "salesforce"


def to_properties(
    sobject: str, fields: Mapping[str, Any], occurred_at: str, maps: ValueMaps
) -> dict[str, Any]:
    """The landing properties for these Salesforce ``fields`` of one ``sobject`` record (only
    the fields given: a change event's changed fields, or a whole queried record)."""
    _, mapped = FIELDS[sobject]
    properties: dict[str, Any] = {}
    for name, value in fields.items():
        if name in SYSTEM_FIELDS:
            continue
        target = mapped.get(name)
        if target is None:
            properties[name] = value
        elif target == "owner_id" and value is not None and not str(value).startswith("005"):
            # A queue (00G...) owns the record: Revorch knows users only, so keep it aside.
            properties["OwnerId"] = value
        else:
            properties[target] = _convert(sobject, target, value, maps)
    if sobject == "Lead" and properties.get("lead_status") is not None:
        status = fields["Status"]
        properties |= maps.lead_status.get(status, {"lead_status": _slug(status)})
    if sobject == "Contact" and maps.contact_stage_field in fields:
        value = fields[maps.contact_stage_field]
        properties["lifecycle_stage"] = maps.contact_stages.get(value, value)
    if sobject == "Opportunity" and fields.get("IsClosed"):
        closed_on = properties.get("close_date")
        properties["closed_at"] = f"{closed_on}T00:00:00Z" if closed_on else occurred_at
    if sobject == "Task":
        what = fields.get("WhatId") or ""
        if what.startswith("006"):
            properties["deal_id"] = what
        elif what.startswith("001") and not properties.get("company_id"):
            properties["company_id"] = what
    return properties


def is_converted_lead(sobject: str, fields: Mapping[str, Any]) -> bool:
    """A converted Lead lives on as a Contact: the lead itself is landed as a delete, so one
    person is not counted twice."""
    return sobject == "Lead" and bool(fields.get("IsConverted"))


def _convert(sobject: str, target: str, value: Any, maps: ValueMaps) -> Any:
    if value is None:
        return None
    if target in _TIMESTAMPS:
        return iso_timestamp(value)
    if target in _DATES:
        return iso_date(value)
    if target == "domain":
        return _domain(value)
    if sobject == "Opportunity" and target == "stage":
        return maps.opportunity_stage.get(value, _slug(value))
    if sobject == "Opportunity" and target == "deal_type":
        return maps.opportunity_type.get(value, _slug(value))
    if sobject == "Task" and target == "activity_type":
        return maps.task_subtype.get(value, _slug(value))
    if sobject == "Task" and target == "contact_id" and not str(value).startswith(("003", "00Q")):
        return None
    return value


def iso_timestamp(value: Any) -> str:
    """A Salesforce datetime (REST ``2026-03-01T09:30:00.000+0000``, or epoch milliseconds in
    a change event) as ``2026-03-01T09:30:00Z``."""
    if isinstance(value, int | float):
        moment = datetime.fromtimestamp(value / 1000, UTC)
    elif isinstance(value, datetime):
        moment = value.astimezone(UTC)
    else:
        moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text.replace(".000Z", "Z")


def iso_date(value: Any) -> str:
    """A Salesforce date (REST ``2026-03-01``; in a change event days, or milliseconds, since
    1970) as ``2026-03-01``."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int):
        days = value if abs(value) < 1_000_000 else value // 86_400_000
        return (date(1970, 1, 1) + timedelta(days=days)).isoformat()
    return str(value)[:10]


def _domain(website: str) -> str:
    host = website.strip().lower().split("://", 1)[-1].split("/", 1)[0]
    return host.removeprefix("www.")


def _slug(value: str) -> str:
    return "_".join(str(value).lower().replace("-", " ").split())
