"""The dispatcher: the only code that sends anything out of Revorch.

For every action that is ready (allowed), approved, or due for another try:

1. Judge it again against the policy in force now, and record that verdict. Forbidden now:
   closed, never sent. Needing approval and not approved: back to the approval queue.
2. Mark it ``sending`` (committed), then deliver it to the target.
3. Record the result: ``sent``; or ``retry`` with a backoff; or ``failed`` after
   ``max_attempts`` or an error that will not heal.

Exactly once: an action is delivered only from ``sending``, and marked ``sent`` once. If the
process dies between delivering and recording, the next dispatch asks the target which
``sending`` actions it already has (the outbox file is searched; a webhook receives the same
``Idempotency-Key`` again).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from revorch import clock
from revorch.agents.redact import known_names, pseudonymise, restore
from revorch.governance.audit import AuditEvent, audited
from revorch.governance.policy import Policy
from revorch.governance.status import update_actions
from revorch.governance.targets import Delivery, Target
from revorch.governance.verdicts import record_policy_version, verdict_event

DUE_SQL = """
SELECT action_id, action_type, source, decision_id, entity_type, entity_id, company_id, reason,
       CAST(payload AS VARCHAR) AS payload, CAST(facts AS VARCHAR) AS facts, status,
       approved_by, attempts, proposed_at
FROM governance.actions
WHERE status IN ('ready', 'approved', 'sending')
   OR (status = 'retry' AND next_attempt_at <= $now)
ORDER BY proposed_at, action_id
"""


@dataclass
class DispatchReport:
    outcomes: Counter = field(default_factory=Counter)

    def as_metadata(self) -> dict[str, int]:
        return {f"dispatch/{outcome}": n for outcome, n in sorted(self.outcomes.items())}


def backoff(attempt: int) -> timedelta:
    """Wait before try ``attempt + 1``: 1, 2, 4, ... minutes, at most an hour."""
    return timedelta(minutes=min(2 ** (attempt - 1), 60))


def dispatch(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    target: Target,
    *,
    run_id: str | None,
    anchor_path: Path | None,
    max_attempts: int = 5,
    now: datetime | None = None,
) -> DispatchReport:
    """Send every due action that the policy allows now; see the module docstring."""
    now = now or clock.now(conn)
    report = DispatchReport()
    cursor = conn.execute(DUE_SQL, {"now": now})
    names = [column[0] for column in cursor.description]
    due = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    if not due:
        return report

    # A crash may have left actions in 'sending' that the target already has.
    interrupted = [a["action_id"] for a in due if a["status"] == "sending"]
    already = target.delivered(interrupted)
    updates: list[dict] = []
    go = []
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        record_policy_version(conn, policy)
        for action in due:
            if action["action_id"] in already:
                updates.append(_sent(action, now))
                trail.append(_event("dispatched", action, target, "found after a restart"))
                report.outcomes["sent"] += 1
                continue
            judgement = policy.judge(
                action["action_type"], action["source"], json.loads(action["facts"])
            )
            trail.append(verdict_event(action, judgement, "dispatch"))
            update = {
                "action_id": action["action_id"],
                "verdict": judgement.verdict,
                "policy_version": judgement.policy_version,
                "verdict_rules": list(judgement.rules),
            }
            if judgement.verdict == "forbid":
                update |= _closed("forbidden", f"forbidden at dispatch by {judgement.rules}")
                report.outcomes["forbidden"] += 1
            elif judgement.verdict == "approve" and not action["approved_by"]:
                due_at = now + timedelta(hours=policy.approvals.sla_hours)
                update |= {"status": "pending_approval", "approval_due_at": due_at}
                report.outcomes["sent_for_approval"] += 1
            else:
                update |= {"status": "sending", "attempts": action["attempts"] + 1}
                update["target"] = target.name
                go.append(action)
            updates.append(update)
        update_actions(conn, updates)

    if not go:
        return report
    originals = _personal_data(conn, go, policy)
    messages = [_message(action, originals.get(action["decision_id"])) for action in go]
    deliveries = target.deliver(messages)
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        updates = []
        for action, delivery in zip(go, deliveries, strict=True):
            update = _outcome(action, delivery, max_attempts, now)
            updates.append(update)
            report.outcomes[update["status"]] += 1
            event = "dispatched" if delivery.ok else "dispatch_failed"
            trail.append(_event(event, action, target, delivery.detail, update["status"]))
        update_actions(conn, updates)
    return report


def _personal_data(
    conn: duckdb.DuckDBPyConnection, actions: list[dict], policy: Policy
) -> dict[str, dict[str, str]]:
    """For the decisions behind actions the policy lets carry personal data back: what each
    placeholder stood for, redacted again exactly as the agent's prompt was."""
    restorable = policy.data_handling.restore_personal_data_for
    wanted = sorted(
        {a["decision_id"] for a in actions if a["decision_id"] and a["action_type"] in restorable}
    )
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT decision_id, any_value(CAST(input AS VARCHAR)) FROM agents.decisions "
        "WHERE list_contains(?, decision_id) GROUP BY decision_id",
        [wanted],
    ).fetchall()
    records = {decision_id: json.loads(text) for decision_id, text in rows}
    names = known_names(conn, list(records.values()))
    return {
        decision_id: pseudonymise(record, known)[1]
        for (decision_id, record), known in zip(records.items(), names, strict=True)
    }


def _message(action: dict, originals: dict[str, str] | None) -> dict:
    """What the target receives. Agents' text keeps its placeholders for personal data
    unless ``originals`` (the policy allows this action type to carry them) puts them back."""
    message = {
        "action_id": action["action_id"],
        "action_type": action["action_type"],
        "source": action["source"],
        "decision_id": action["decision_id"],
        "entity_type": action["entity_type"],
        "entity_id": action["entity_id"],
        "company_id": action["company_id"],
        "reason": action["reason"],
        "payload": json.loads(action["payload"]),
        "approved_by": action["approved_by"],
        "proposed_at": action["proposed_at"].isoformat(),
    }
    if originals:
        message["reason"] = restore(message["reason"], originals)
        message["payload"] = restore(message["payload"], originals)
    return message


def _outcome(action: dict, delivery: Delivery, max_attempts: int, now: datetime) -> dict:
    attempt = action["attempts"] + 1
    if delivery.ok:
        return _sent(action, now)
    if delivery.retryable and attempt < max_attempts:
        return {
            "action_id": action["action_id"],
            "status": "retry",
            "next_attempt_at": now + backoff(attempt),
            "last_error": delivery.detail,
        }
    return {
        "action_id": action["action_id"],
        **_closed("failed", f"gave up after {attempt} attempts: {delivery.detail}"),
        "last_error": delivery.detail,
    }


def _sent(action: dict, now: datetime) -> dict:
    return {"action_id": action["action_id"], "status": "sent", "sent_at": now}


def _closed(status: str, resolution: str) -> dict:
    return {"status": status, "resolution": resolution}


def _event(event: str, action: dict, target: Target, detail: str, outcome: str = "sent"):
    return AuditEvent(
        event,
        "dispatcher",
        {
            "target": target.name,
            "detail": detail,
            "outcome": outcome,
            "attempt": action["attempts"] + 1,
            "action_type": action["action_type"],
        },
        action_id=action["action_id"],
        entity_type=action["entity_type"],
        entity_id=action["entity_id"],
        company_id=action["company_id"],
    )
