"""Write-back to Salesforce: the dispatcher's target for an org (docs/sources/salesforce.md,
"Write-back").

Each action becomes one Salesforce write, made at most once:

- a Task for the record's owner (upserted on the external-id field ``Revorch_Action_Id__c``,
  so the same action sent again updates the same Task instead of creating a second one);
- for ``update_crm_field`` on a Lead, the Lead's Status itself (setting a value twice is one
  effect).

Every request carries ``Sforce-Call-Options: client=revorch``: Salesforce writes it into the
``changeOrigin`` of the change events it causes, and the CDC subscriber skips those, so a
decision is never read back in as a new change. Dry run by default: the requests are written
to the outbox file instead of being made.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from revorch.governance.targets import Delivery, OutboxFile

if TYPE_CHECKING:
    from simple_salesforce import Salesforce

CALL_OPTIONS = {"Sforce-Call-Options": "client=revorch"}
ACTION_ID_FIELD = "Revorch_Action_Id__c"
# Revorch's lead_status values and the Lead Status picklist value each one writes.
LEAD_STATUS = {"unqualified": "Closed - Not Converted"}
# Above this share of the org's daily API allowance, actions wait (retried later).
API_USAGE_CEILING = 0.9


class SalesforceWriteBack:
    """Carries actions out in a Salesforce org, or (``dry_run``) writes the requests it would
    make to ``outbox``."""

    name = "salesforce"
    batch_size = 1  # one request per action, journaled before and after

    def __init__(self, sf: Salesforce | None, outbox: OutboxFile, *, dry_run: bool = True):
        if sf is None and not dry_run:
            raise ValueError("a live Salesforce write-back needs a signed-in client")
        self.sf, self.outbox, self.dry_run = sf, outbox, dry_run

    def repair(self) -> list[dict]:
        return self.outbox.repair() if self.dry_run else []

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        if self.dry_run:
            return self.outbox.deliver(
                [m | {"salesforce_request": request(m), "dry_run": True} for m in messages]
            )
        return [self._write(message) for message in messages]

    def _write(self, message: dict) -> Delivery:
        from simple_salesforce.exceptions import SalesforceError

        sobject, key, body = request(message)
        try:
            if self._near_limit():
                return Delivery(ok=False, retryable=True, detail="API allowance nearly used")
            # Through restful(), so the client reads the org's API usage from the answer.
            self.sf.restful(
                f"sobjects/{sobject}/{key}", method="PATCH", json=body, headers=CALL_OPTIONS
            )
        except SalesforceError as error:
            retryable = error.status >= 500 or "REQUEST_LIMIT_EXCEEDED" in str(error.content)
            return Delivery(ok=False, retryable=retryable, detail=f"HTTP {error.status}")
        except OSError as error:  # requests' connection errors are OSErrors
            return Delivery(ok=False, retryable=True, detail=f"unreachable: {error}")
        return Delivery(ok=True, detail=f"{sobject}/{key}")

    def _near_limit(self) -> bool:
        usage = (self.sf.api_usage or {}).get("api-usage") if self.sf else None
        return bool(usage) and usage.used >= API_USAGE_CEILING * usage.total


def request(message: dict) -> tuple[str, str, dict[str, Any]]:
    """(object, record key, fields) of the write an action makes: ``key`` is a record id, or
    ``<external id field>/<value>`` for an upsert."""
    payload, entity_id = message["payload"], message["entity_id"]
    if (
        message["action_type"] == "update_crm_field"
        and payload.get("field") == "lead_status"
        and str(entity_id).startswith("00Q")
        and payload.get("value") in LEAD_STATUS
    ):
        return "Lead", entity_id, {"Status": LEAD_STATUS[payload["value"]]}
    task: dict[str, Any] = {
        "Subject": f"Revorch: {message['action_type'].replace('_', ' ')}"[:255],
        "Description": _description(message),
        "Status": "Not Started",
    }
    owner = (payload.get("to") or {}).get("owner_id")
    if owner and str(owner).startswith("005"):
        task["OwnerId"] = owner
    if str(entity_id).startswith(("003", "00Q")):
        task["WhoId"] = entity_id
    elif str(entity_id).startswith(("001", "006")):
        task["WhatId"] = entity_id
    elif str(message.get("company_id") or "").startswith("001"):
        task["WhatId"] = message["company_id"]
    return "Task", f"{ACTION_ID_FIELD}/{message['action_id']}", task


def _description(message: dict) -> str:
    details = {k: v for k, v in message["payload"].items() if k != "to"}
    lines = [message["reason"], "", json.dumps(details, sort_keys=True, default=str)]
    if message.get("approved_by"):
        lines.insert(1, f"Approved by {message['approved_by']}")
    return "\n".join(lines)[:32_000]
