"""Human approval gates: approve or reject what waits, escalate what waits too long.

An action the policy sends for approval waits in ``governance.approval_queue``. A person
approves it (the dispatcher then sends it, once) or rejects it with a reason (it is closed
and never sent). Past ``approvals.sla_hours`` it is escalated: a ``notify_approver`` action
goes to the escalation role through the dispatcher like any other. Past
``approvals.expire_hours`` it is closed as expired. Nothing waits forever unseen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from revorch import clock
from revorch.governance.actions import GOVERNANCE
from revorch.governance.audit import AuditEvent, audited
from revorch.governance.policy import Approvals, Policy
from revorch.governance.verdicts import judge_proposed
from revorch.state.backend import retry_conflicts

PENDING = "pending_approval"
DECISIONS = {"approve": "approved", "reject": "rejected"}


class ReviewError(ValueError):
    """A review that cannot be applied; nothing of it was applied."""


@dataclass(frozen=True)
class Review:
    action_ids: list[str]
    decision: str  # approve or reject
    reviewer: str
    comment: str = ""

    def validate(self) -> None:
        if self.decision not in DECISIONS:
            raise ReviewError(f"decision must be approve or reject, not {self.decision!r}")
        if not self.reviewer.strip():
            raise ReviewError("say who reviews (reviewer)")
        if self.decision == "reject" and not self.comment.strip():
            raise ReviewError("a rejection needs a comment saying why")
        if not self.action_ids:
            raise ReviewError("name at least one action id")


def review(
    conn: duckdb.DuckDBPyConnection,
    review: Review,
    *,
    run_id: str | None,
    anchor_path: Path | None,
) -> int:
    """Apply one person's approval or rejection to pending actions, all or none.

    On DuckLake a review whose commit conflicts with a concurrent writer's (another review,
    the dispatcher) runs again on the newer snapshot: an action the other one reviewed
    meanwhile is then no longer pending, and nothing of this review is applied."""
    review.validate()
    return retry_conflicts(lambda: _review(conn, review, run_id, anchor_path))


def _review(
    conn: duckdb.DuckDBPyConnection, review: Review, run_id: str | None, anchor_path: Path | None
) -> int:
    status = DECISIONS[review.decision]
    ids = sorted(set(review.action_ids))
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        found = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions "
                "WHERE action_id IN (SELECT unnest(?))",
                [ids],
            ).fetchall()
        )
        problems = [
            f"{action_id}: no such action"
            if action_id not in found
            else f"{action_id}: is {found[action_id]}, not waiting for approval"
            for action_id in ids
            if found.get(action_id) != PENDING
        ]
        if problems:
            raise ReviewError("nothing was applied:\n  " + "\n  ".join(problems))
        conn.execute(
            """
            UPDATE governance.actions
            SET status = $status, updated_at = now(),
                approved_by = CASE WHEN $status = 'approved' THEN $reviewer END,
                resolution = CASE WHEN $status = 'rejected'
                                  THEN 'rejected by ' || $reviewer || ': ' || $comment END
            WHERE action_id IN (SELECT unnest($ids))
            """,
            {"status": status, "reviewer": review.reviewer, "comment": review.comment, "ids": ids},
        )
        trail.extend(
            AuditEvent(
                status,
                f"human:{review.reviewer}",
                {"comment": review.comment, "action_type": action_type},
                action_id=action_id,
                entity_type=entity_type,
                entity_id=entity_id,
                company_id=company_id,
            )
            for action_id, action_type, entity_type, entity_id, company_id in _actions(conn, ids)
        )
    return len(ids)


def escalate_and_expire(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    *,
    run_id: str | None,
    anchor_path: Path | None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Escalate pending approvals past their SLA, close those past expiry; return the counts."""
    now = now or clock.now(conn)
    # Retried as a review is: on DuckLake it may meet a concurrent review or dispatch.
    notices, expired = retry_conflicts(
        lambda: _escalate_and_expire(conn, policy.approvals, run_id, anchor_path, now)
    )
    if notices:  # the notices pass the policy like every other action
        judge_proposed(conn, policy, run_id=run_id, anchor_path=anchor_path, now=now)
    return notices, expired


def _escalate_and_expire(
    conn: duckdb.DuckDBPyConnection,
    settings: Approvals,
    run_id: str | None,
    anchor_path: Path | None,
    now: datetime,
) -> tuple[int, int]:
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        # Select, then update, in the one transaction: DuckLake has no UPDATE ... RETURNING.
        expired = conn.execute(
            """
            SELECT action_id, action_type, entity_type, entity_id, company_id
            FROM governance.actions
            WHERE status = $pending
              AND proposed_at + to_microseconds(CAST($hours * 3600e6 AS BIGINT)) <= $now
            """,
            {"pending": PENDING, "hours": settings.expire_hours, "now": now},
        ).fetchall()
        conn.execute(
            """
            UPDATE governance.actions
            SET status = 'expired', updated_at = now(),
                resolution = 'no decision within ' || $hours || ' hours'
            WHERE action_id IN (SELECT unnest($ids))
            """,
            {"hours": settings.expire_hours, "ids": [row[0] for row in expired]},
        )
        trail.extend(
            AuditEvent(
                "expired",
                GOVERNANCE,
                {"hours": settings.expire_hours, "action_type": action_type},
                action_id=action_id,
                entity_type=entity_type,
                entity_id=entity_id,
                company_id=company_id,
            )
            for action_id, action_type, entity_type, entity_id, company_id in expired
        )
        overdue = conn.execute(
            """
            SELECT action_id, action_type, entity_type, entity_id, company_id, reason,
                   approval_due_at
            FROM governance.actions
            WHERE status = $pending AND escalated_at IS NULL AND approval_due_at <= $now
            """,
            {"pending": PENDING, "now": now},
        ).fetchall()
        conn.execute(
            "UPDATE governance.actions SET escalated_at = $now, updated_at = now() "
            "WHERE action_id IN (SELECT unnest($ids))",
            {"now": now, "ids": [row[0] for row in overdue]},
        )
        notices = []
        for action_id, action_type, entity_type, entity_id, company_id, reason, due in overdue:
            where = {"entity_type": entity_type, "entity_id": entity_id, "company_id": company_id}
            trail.append(
                AuditEvent(
                    "escalated",
                    GOVERNANCE,
                    {"to_role": settings.escalate_to_role, "due_at": due.isoformat()},
                    action_id=action_id,
                    **where,
                )
            )
            notices.append(_notice(action_id, action_type, reason, due, settings, now, run_id))
            notices[-1].update(where)
        if notices:
            frame = pl.DataFrame(
                notices, schema_overrides={"proposed_at": pl.Datetime("us", "UTC")}
            )
            conn.register("notices", frame)
            conn.execute(
                "INSERT INTO governance.actions BY NAME "
                "SELECT *, proposed_at AS updated_at, 'proposed' AS status FROM notices "
                "WHERE action_id NOT IN (SELECT action_id FROM governance.actions)"
            )
            conn.unregister("notices")
            trail.extend(
                AuditEvent(
                    "proposed",
                    GOVERNANCE,
                    {"action_type": "notify_approver", "reason": n["reason"]},
                    action_id=n["action_id"],
                    entity_type=n["entity_type"],
                    entity_id=n["entity_id"],
                    company_id=n["company_id"],
                )
                for n in notices
            )
    return len(notices), len(expired)


def _notice(action_id, action_type, reason, due, settings, now, run_id) -> dict:
    payload = {
        "to": {"role": settings.escalate_to_role, "owner_id": None},
        "waiting_action_id": action_id,
        "waiting_action_type": action_type,
        "approval_due_at": due.isoformat(),
    }
    facts = {"tier": "rule", "customer_facing": False}
    return {
        "action_id": f"esc-{action_id}",
        "action_type": "notify_approver",
        "source": GOVERNANCE,
        "decision_id": None,
        "reason": f"approval of {action_type} {action_id} is overdue: {reason}",
        "payload": json.dumps(payload, sort_keys=True),
        "facts": json.dumps(facts, sort_keys=True),
        "proposed_at": now,
        "proposed_run_id": run_id,
    }


def _actions(conn, ids: list[str]) -> list[tuple]:
    return conn.execute(
        "SELECT action_id, action_type, entity_type, entity_id, company_id "
        "FROM governance.actions WHERE action_id IN (SELECT unnest(?)) ORDER BY action_id",
        [ids],
    ).fetchall()
