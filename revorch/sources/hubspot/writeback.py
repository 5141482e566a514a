"""The HubSpot write-back: a dispatch target that carries Revorch's decisions into the CRM.

Only the dispatcher uses it (revorch/governance/dispatch.py), so every write has passed the
policy and, where it must, a person. Dry run by default: the requests it would make are
appended to a JSON-lines file, one line per action, and HubSpot is not called.

What an action writes, on its record (the contact, deal or ticket; the company for the rest):

- always ``revorch_last_action`` (its type), and the action's id in ``revorch_action_id``
  (which keeps the last 20 action ids written to the record, newest first);
- ``update_crm_field``: the field it names (lead status, lifecycle stage, ...);
- ``assign_owner``: ``hubspot_owner_id`` when the payload names an owner, and the intent score
  as ``revorch_intent_score``;
- scores the payload carries (``risk_score``) as ``revorch_risk_score``;
- actions addressed to a person (follow-ups, notifications, escalations, onboarding tasks,
  ticket routing) also create a HubSpot task for the record's owner, associated with it.

Exactly once per action: before writing, the target looks for the action in its ledger
(:mod:`revorch.sources.hubspot.own_writes`), then on the record itself (its
``revorch_action_id``) and, for a task, among the tasks (by its subject, which names the
action). Each write is recorded in the ledger with the instant HubSpot stamped on the record,
which is how the poller knows the change is Revorch's own and does not read it back in.
"""

from __future__ import annotations

import json
from pathlib import Path

import urllib3
from hubspot.crm.objects.exceptions import ApiException

from revorch.governance.targets import Delivery, OutboxFile
from revorch.sources.hubspot.api import HubSpotApi
from revorch.sources.hubspot.mapping import HUBSPOT_PROPERTY, MARKER, OBJECTS, to_millis
from revorch.sources.hubspot.own_writes import OwnWrites

RECORD_OF = {"contact": "contacts", "deal": "deals", "ticket": "tickets"}
# Action types that ask a person to do something: they become a task for the record's owner.
TASK_ACTIONS = frozenset(
    {
        "send_follow_up",
        "notify_manager",
        "notify_csm",
        "notify_engineering",
        "route_ticket",
        "escalate_renewal_risk",
        "create_onboarding_tasks",
        "send_plan_to_customer",
        "offer_discount",
    }
)
# The record's marker keeps the ids of the last actions written to it, newest first, so each
# can be found there after a crash (several actions may write to one record).
MARKER_KEEPS = 20
# HubSpot-defined association types from a task to its record.
TASK_ASSOCIATION = {"contacts": 204, "companies": 192, "deals": 216, "tickets": 230}


class HubSpotTarget:
    """A dispatch target (revorch.governance.targets.Target) writing to a HubSpot portal."""

    name = "hubspot"
    batch_size = 1  # one action per delivery, each journaled before and after

    def __init__(
        self,
        api: HubSpotApi | None,
        own_writes: OwnWrites,
        *,
        dry_run: bool = True,
        dry_run_path: Path | None = None,
    ) -> None:
        if not dry_run and api is None:
            raise ValueError("a live HubSpot write-back needs an API client (a token)")
        self.api, self.own_writes, self.dry_run = api, own_writes, dry_run
        self.plans = OutboxFile(dry_run_path or own_writes.path.with_name("hubspot-dry-run.jsonl"))

    def repair(self) -> list[dict]:
        return self.plans.repair() if self.dry_run else []

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        if self.dry_run:
            planned = [{**m, "hubspot_requests": plan(m)} for m in messages]
            return [
                Delivery(ok=d.ok, retryable=d.retryable, detail=f"dry run: {d.detail}")
                for d in self.plans.deliver(planned)
            ]
        return [self._write(message) for message in messages]

    def _write(self, message: dict) -> Delivery:
        requests = plan(message)
        if not requests:
            return Delivery(ok=False, detail="no HubSpot record to write to")
        action_id = message["action_id"]
        done = self.own_writes.done(action_id)
        try:
            for request in requests:
                if request["method"] == "PATCH":
                    if (request["object_type"], request["object_id"]) not in done:
                        self._patch(action_id, request)
                elif not any(object_type == "tasks" for object_type, _ in done):
                    self._create_task(action_id, request)
        except ApiException as error:
            retryable = error.status in (408, 429) or (error.status or 500) >= 500
            return Delivery(ok=False, retryable=retryable, detail=f"HTTP {error.status}")
        except urllib3.exceptions.HTTPError as error:  # unreachable, or retries used up
            return Delivery(ok=False, retryable=True, detail=f"unreachable: {error}")
        return Delivery(ok=True, detail=", ".join(_describe(r) for r in requests))

    def _patch(self, action_id: str, request: dict) -> None:
        object_type, object_id = request["object_type"], request["object_id"]
        current = self.api.get(object_type, object_id, [MARKER])
        recent = marked_actions(current["properties"].get(MARKER))
        if action_id in recent:
            # Written before a crash cut the ledger short: record it, do not write again.
            modified = to_millis(current["updated_at"])
        else:
            marker = ";".join([action_id, *recent][:MARKER_KEEPS])
            written = self.api.update(
                object_type, object_id, {**request["properties"], MARKER: marker}
            )
            modified = to_millis(written["updated_at"])
        self.own_writes.record(object_type, object_id, modified, action_id, request["properties"])

    def _create_task(self, action_id: str, request: dict) -> None:
        subject = request["properties"]["hs_task_subject"]
        found = self.api.search(
            "tasks",
            properties=["hs_task_subject"],
            filters=[{"property_name": "hs_task_subject", "operator": "EQ", "value": subject}],
            sort_property="hs_createdate",
            limit=1,
        )
        if found["results"]:
            task = found["results"][0]
        else:
            task = self.api.create("tasks", request["properties"], request["associations"])
        self.own_writes.record(
            "tasks", task["id"], to_millis(task["updated_at"]), action_id, request["properties"]
        )


def plan(message: dict) -> list[dict]:
    """The HubSpot requests an action makes: a PATCH of its record, and a task if it asks a
    person to act. Empty when it names no HubSpot record."""
    entity_type = message["entity_type"]
    if entity_type in RECORD_OF:
        object_type, object_id = RECORD_OF[entity_type], message["entity_id"]
    elif message.get("company_id"):
        object_type, object_id = "companies", message["company_id"]
    else:
        return []
    payload = message.get("payload") or {}
    action_type = message["action_type"]
    properties: dict[str, object] = {"revorch_last_action": action_type}
    if action_type == "update_crm_field" and payload.get("field"):
        columns = HUBSPOT_PROPERTY[OBJECTS[object_type].revorch]
        name = columns.get(payload["field"], payload["field"])
        value = payload.get("value")
        # HubSpot's lead statuses are upper case (UNQUALIFIED); Revorch keeps them lower case.
        properties[name] = value.upper() if name == "hs_lead_status" and value else value
    if action_type == "assign_owner":
        if payload.get("owner_id"):
            properties["hubspot_owner_id"] = payload["owner_id"]
        if payload.get("intent_score") is not None:
            properties["revorch_intent_score"] = payload["intent_score"]
    if payload.get("risk_score") is not None:
        properties["revorch_risk_score"] = payload["risk_score"]
    requests = [
        {
            "method": "PATCH",
            "object_type": object_type,
            "object_id": object_id,
            "properties": properties,
        }
    ]
    if action_type in TASK_ACTIONS:
        owner = (payload.get("to") or {}).get("owner_id")
        task = {
            "hs_task_subject": f"Revorch: {action_type.replace('_', ' ')} [{message['action_id']}]",
            "hs_task_body": message["reason"],
            "hs_task_status": "NOT_STARTED",
            "hs_timestamp": message["proposed_at"],
        }
        if owner:
            task["hubspot_owner_id"] = owner
        association = {
            "to": {"id": object_id},
            "types": [
                {
                    "associationCategory": "HUBSPOT_DEFINED",
                    "associationTypeId": TASK_ASSOCIATION[object_type],
                }
            ],
        }
        requests.append(
            {
                "method": "POST",
                "object_type": "tasks",
                "properties": task,
                "associations": [association],
            }
        )
    return requests


def marked_actions(marker: str | None) -> list[str]:
    """The action ids a record's marker holds, newest first."""
    return [a for a in (marker or "").split(";") if a]


def _describe(request: dict) -> str:
    where = f"{request['object_type']}/{request.get('object_id', '')}".rstrip("/")
    return f"{request['method']} {where} {json.dumps(sorted(request['properties']))}"
