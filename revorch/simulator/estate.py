"""A small estate of existing automations working on the simulated CRM (docs/estate.md).

Five automations, each writing change events whose ``source`` is its automation id, and the
inventory files that list them in the formats ``revorch estate import`` reads (a HubSpot
workflows export, a Salesforce FlowDefinitionView listing and a Zapier CSV):

- ``hubspot:101`` MQL fast follow-up and ``salesforce:300Dn00000LeadRcy`` lead recycling are
  helpful: the contacts they touch go on to the next stage far more often than others;
- ``zapier:9001`` webinar tagging is busy and useless: it touches contacts at random, twice;
- ``hubspot:102`` and ``salesforce:300Dn00000Territ`` both route MQLs to a territory and
  overwrite each other's ``territory`` within minutes (a flip-flop).

The simulator has no causal model of these automations: a "helpful" one picks the records
that will progress (it reads the hidden outcome), which is exactly what an observational audit
cannot tell apart from an effect. The estate only writes properties Revorch does not model,
so the lifecycle it runs on is unchanged.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from revorch.landing import LandingZone
from revorch.simulator.config import SimulationConfig
from revorch.simulator.history import history_frame

SOURCE = "estate"
_NEXT_STAGE = {"lead": 1, "marketingqualifiedlead": 2, "salesqualifiedlead": 3}
_STAGE_RANK = {
    "lead": 1,
    "marketingqualifiedlead": 2,
    "salesqualifiedlead": 3,
    "opportunity": 4,
    "customer": 5,
}
HELPFUL = ("hubspot:101", "salesforce:300Dn00000LeadRcy")
USELESS = "zapier:9001"
CONFLICTING = ("hubspot:102", "salesforce:300Dn00000Territ")


@dataclass(frozen=True)
class Episode:
    """A contact's stay in a lifecycle stage: entered, left (or None), moved up after it."""

    contact: str
    stage: str
    entered: datetime
    left: datetime | None
    progressed: bool


@dataclass(frozen=True)
class EstateSummary:
    events: int
    by_automation: dict[str, int]
    inventory: tuple[Path, ...]


def simulate_estate(
    zone: LandingZone, config: SimulationConfig, inventory_dir: Path
) -> EstateSummary:
    """Land the estate's change events (one batch of source ``estate``) and write its
    inventory files into ``inventory_dir``."""
    events = estate_events(config)
    if events:
        with zone.open_batch(SOURCE) as tmp:
            tmp.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
    counts: dict[str, int] = {}
    for event in events:
        counts[event["source"]] = counts.get(event["source"], 0) + 1
    return EstateSummary(len(events), dict(sorted(counts.items())), write_inventory(inventory_dir))


def estate_events(config: SimulationConfig) -> list[dict]:
    """The estate's change events on the history of ``config`` (same config, same events)."""
    rng = config.rng(41)
    episodes = lifecycle_episodes(config)
    out: list[dict] = []

    def write(automation: str, contact: str, at: datetime, properties: dict) -> None:
        out.append(
            {
                "event_id": f"estate-{config.seed}-{len(out) + 1:07d}",
                "object_type": "contact",
                "object_id": contact,
                "occurred_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "source": automation,
                "properties": properties,
            }
        )

    for ep in episodes:
        room = (ep.left - ep.entered) if ep.left else timedelta(days=365)
        if room < timedelta(hours=3):
            continue  # no time to act before the contact moved on
        delay = timedelta(minutes=int(rng.integers(5, 90)))
        at = ep.entered + delay
        if ep.stage == "marketingqualifiedlead":
            if rng.random() < (0.9 if ep.progressed else 0.15):
                write(HELPFUL[0], ep.contact, at, {"followup_sequence": "mql_fast_track"})
            if rng.random() < (0.7 if ep.progressed else 0.25):
                # Both routers claim the record; HubSpot's runs again on the Salesforce change.
                write(CONFLICTING[0], ep.contact, at, {"territory": "emea"})
                write(
                    CONFLICTING[1],
                    ep.contact,
                    at + timedelta(minutes=10),
                    {"territory": "EMEA-North"},
                )
                write(CONFLICTING[0], ep.contact, at + timedelta(minutes=20), {"territory": "emea"})
        if ep.stage == "lead" and rng.random() < (0.8 if ep.progressed else 0.15):
            write(HELPFUL[1], ep.contact, at, {"Recycle_Reason__c": "nurture_complete"})
        if ep.stage in ("lead", "marketingqualifiedlead") and rng.random() < 0.5:
            write(USELESS, ep.contact, at, {"webinar_tag": "attended"})
            write(USELESS, ep.contact, at + timedelta(minutes=30), {"webinar_tag": "attended_2x"})
    return out


def lifecycle_episodes(config: SimulationConfig) -> list[Episode]:
    """Each contact's stays in a stage, from the ``lifecycle_stage`` of the simulated history."""
    frame = history_frame(config)
    contacts = frame.filter(
        frame["object_type"].eq("contact")
        & frame["malformed"].is_null()
        & ~frame["duplicate"]
        & frame["line"].cast(str).str.contains('"lifecycle_stage"', literal=True)
    )
    moves: dict[str, list[tuple[datetime, str]]] = {}
    for line in contacts["line"]:
        event = json.loads(line)
        stage = event["properties"].get("lifecycle_stage")
        if stage in _STAGE_RANK:
            at = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
            moves.setdefault(event["object_id"], []).append((at, stage))
    episodes = []
    for contact, timeline in sorted(moves.items()):
        timeline.sort()
        for i, (entered, stage) in enumerate(timeline):
            later = timeline[i + 1 :]
            progressed = any(_STAGE_RANK[s] > _STAGE_RANK[stage] for _, s in later)
            left = later[0][0] if later else None
            episodes.append(Episode(contact, stage, entered, left, progressed))
    return episodes


def write_inventory(folder: Path) -> tuple[Path, ...]:
    """The estate's inventory as its platforms export it (docs/estate.md, "Formats")."""
    folder.mkdir(parents=True, exist_ok=True)
    hubspot = folder / "hubspot_workflows.json"
    hubspot.write_text(json.dumps({"results": [_hubspot_flow(*f) for f in _HUBSPOT]}, indent=1))
    salesforce = folder / "salesforce_flows.json"
    salesforce.write_text(
        json.dumps({"totalSize": 2, "done": True, "records": _SALESFORCE}, indent=1)
    )
    zapier = folder / "zapier_zaps.csv"
    with zapier.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["id", "name", "platform", "trigger", "object_type", "fields_written", "status"]
        )
        writer.writerow(
            [
                9001,
                "Webinar attendee tagging",
                "zapier",
                "New webinar registrant (Zoom)",
                "contact",
                "webinar_tag",
                "on",
            ]
        )
    return hubspot, salesforce, zapier


_HUBSPOT = [
    ("101", "MQL fast follow-up", "followup_sequence"),
    ("102", "Territory routing (HubSpot)", "territory"),
]


def _hubspot_flow(flow_id: str, name: str, prop: str) -> dict:
    at = datetime(2024, 3, 1, tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return {
        "id": flow_id,
        "name": name,
        "isEnabled": True,
        "flowType": "WORKFLOW",
        "type": "CONTACT_FLOW",
        "objectTypeId": "0-1",
        "revisionId": "3",
        "createdAt": at,
        "updatedAt": at,
        "enrollmentCriteria": {"type": "EVENT_BASED", "shouldReEnroll": False},
        "startActionId": "1",
        "actions": [
            {
                "type": "SINGLE_CONNECTION",
                "actionId": "1",
                "actionTypeVersion": 0,
                "actionTypeId": "0-5",
                "fields": {
                    "property_name": prop,
                    "value": {"type": "STATIC_VALUE", "staticValue": "set"},
                },
            }
        ],
    }


_SALESFORCE = [
    {
        "attributes": {"type": "FlowDefinitionView"},
        "DurableId": "300Dn00000LeadRcy",
        "ApiName": "Lead_Recycling",
        "Label": "Lead recycling",
        "ProcessType": "AutoLaunchedFlow",
        "TriggerType": "RecordAfterSave",
        "TriggerObjectOrEventLabel": "Lead",
        "IsActive": True,
        "FieldsWritten": ["Recycle_Reason__c"],
    },
    {
        "attributes": {"type": "FlowDefinitionView"},
        "DurableId": "300Dn00000Territ",
        "ApiName": "Territory_Routing",
        "Label": "Territory routing (Salesforce)",
        "ProcessType": "AutoLaunchedFlow",
        "TriggerType": "RecordAfterSave",
        "TriggerObjectOrEventLabel": "Lead",
        "IsActive": True,
        "FieldsWritten": ["territory"],
    },
]
