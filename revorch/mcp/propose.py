"""An MCP client's proposal, put in the outbox the agents' proposals go through.

The client names an action type, an entity and why (and a discount, for ``offer_discount``).
Everything else comes from the state store, as for an agent's proposal: who receives it (the
entity's owner on record), the facts the policy judges (amount, account tier, customer age),
the company. The client's words travel in ``payload.model_text``, marked untrusted and
written by ``mcp:<client>``, so the screen reads them and a customer-facing action waits for
a person. The action is recorded ``proposed`` (with its audit events) and judged at once by
the policy in force (``verdicts.judge_proposed``); the dispatcher sends it later, or a person
approves it first, like any other. Nothing here talks to a target.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from revorch.governance.actions import CUSTOMER_FACING, MCP, MCP_ACTIONS, MODEL_TEXT, RECIPIENT_ROLE
from revorch.governance.audit import AuditEvent, audited
from revorch.governance.policy import Policy
from revorch.governance.verdicts import judge_proposed
from revorch.mcp.config import Client

MAX_WHY_CHARS = 2000

# Per entity type: its company, owner (the company's owner when it has none) and amount.
ENTITY_SQL = {
    "contact": "SELECT e.company_id, e.owner_id, NULL FROM contacts AS e WHERE e.id = ?",
    "deal": "SELECT e.company_id, e.owner_id, e.amount FROM deals AS e WHERE e.id = ?",
    "subscription": "SELECT e.company_id, NULL, e.arr FROM subscriptions AS e WHERE e.id = ?",
    "company": "SELECT e.id, e.owner_id, NULL FROM companies AS e WHERE e.id = ?",
}
ACCOUNT_SQL = """
SELECT co.tier,
       date_diff('day', (SELECT min(start_date) FROM subscriptions
                         WHERE company_id = co.id AND NOT _deleted), CAST(clock_now() AS DATE)),
       EXISTS (SELECT 1 FROM subscriptions WHERE company_id = co.id AND NOT _deleted)
       OR EXISTS (SELECT 1 FROM deals WHERE company_id = co.id AND stage = 'closedwon'
                  AND NOT _deleted),
       co.owner_id
FROM companies AS co WHERE co.id = ?
"""


class ProposalRefused(ValueError):
    """What the client asked for is not something an MCP client may propose."""


@dataclass(frozen=True)
class Proposal:
    action_type: str
    entity_type: str
    entity_id: str
    why: str
    discount_pct: int | None = None

    def check(self) -> None:
        allowed = MCP_ACTIONS.get(self.action_type)
        if allowed is None:
            raise ProposalRefused(
                f"an MCP client may propose {', '.join(sorted(MCP_ACTIONS))}, "
                f"not {self.action_type!r}"
            )
        if self.entity_type not in allowed:
            raise ProposalRefused(
                f"{self.action_type} is for a {' or '.join(sorted(allowed))}, "
                f"not a {self.entity_type!r}"
            )
        if (self.discount_pct is not None) != (self.action_type == "offer_discount"):
            raise ProposalRefused("discount_pct goes with offer_discount, and only with it")
        if self.discount_pct is not None and not 0 < self.discount_pct <= 100:
            raise ProposalRefused("discount_pct is a percentage between 1 and 100")
        if not self.why.strip() or len(self.why) > MAX_WHY_CHARS:
            raise ProposalRefused(f"say why, in 1 to {MAX_WHY_CHARS} characters")


def propose(
    conn: duckdb.DuckDBPyConnection,
    proposal: Proposal,
    client: Client,
    policy: Policy,
    *,
    anchor_path: Path | None,
) -> dict:
    """Record the proposal and the policy's verdict on it; return the action as it stands.
    The same client proposing the same thing again finds the action it proposed before."""
    proposal.check()
    row = _action_row(conn, proposal, client)
    existing = conn.execute(
        "SELECT 1 FROM governance.actions WHERE action_id = ?", [row["action_id"]]
    ).fetchone()
    if existing is None:
        where = {
            "action_id": row["action_id"],
            "entity_type": row["entity_type"],
            "entity_id": row["entity_id"],
            "company_id": row["company_id"],
        }
        with audited(conn, run_id=None, anchor_path=anchor_path) as trail:
            conn.execute(
                "INSERT INTO governance.actions (action_id, action_type, source, decision_id, "
                "entity_type, entity_id, company_id, reason, payload, facts, proposed_at, "
                "proposed_run_id, status, updated_at) "
                "VALUES ($action_id, $action_type, $source, NULL, $entity_type, $entity_id, "
                "$company_id, $reason, $payload, $facts, clock_now(), NULL, 'proposed', "
                "clock_now())",
                row,
            )
            trail.append(
                AuditEvent(
                    "proposed",
                    client.actor,
                    {
                        "action_type": row["action_type"],
                        "reason": row["reason"],
                        "facts": row["facts"],
                    },
                    **where,
                )
            )
        judge_proposed(conn, policy, run_id=None, anchor_path=anchor_path, only=[row["action_id"]])
    return action_state(conn, row["action_id"])


def action_state(conn: duckdb.DuckDBPyConnection, action_id: str) -> dict:
    cursor = conn.execute(
        "SELECT action_id, action_type, source, entity_type, entity_id, company_id, reason, "
        "status, verdict, verdict_rules, policy_version, approval_due_at, resolution "
        "FROM governance.actions WHERE action_id = ?",
        [action_id],
    )
    names = [column[0] for column in cursor.description]
    return json.loads(json.dumps(dict(zip(names, cursor.fetchone(), strict=True)), default=str))


def _action_row(conn: duckdb.DuckDBPyConnection, proposal: Proposal, client: Client) -> dict:
    found = conn.execute(
        ENTITY_SQL[proposal.entity_type] + " AND NOT e._deleted", [proposal.entity_id]
    ).fetchone()
    if found is None:
        raise ProposalRefused(
            f"no {proposal.entity_type} {proposal.entity_id!r} in the state store"
        )
    company_id, owner_id, amount = found
    tier, age, is_customer, company_owner = conn.execute(ACCOUNT_SQL, [company_id]).fetchone() or (
        None,
        None,
        None,
        None,
    )
    action_type = proposal.action_type
    payload: dict = {
        "to": {"role": RECIPIENT_ROLE[action_type], "owner_id": owner_id or company_owner},
        "requested_by": client.actor,
        MODEL_TEXT: {"written_by": client.actor, "untrusted": True, "reasons": [proposal.why]},
    }
    if proposal.discount_pct is not None:
        payload["discount_pct"] = proposal.discount_pct
    facts = {
        "tier": "mcp",
        "confidence": None,
        "amount": amount,
        "risk_score": None,
        "discount_pct": proposal.discount_pct,
        "account_tier": tier,
        "customer_age_days": age,
        "customer_facing": action_type in CUSTOMER_FACING,
        "is_customer": is_customer if company_id else None,
        "model_written": True,
    }
    # Proposed once per client, entity and request: asking again finds the same action.
    key = "|".join(
        [
            MCP,
            client.name,
            proposal.entity_type,
            proposal.entity_id,
            action_type,
            str(proposal.discount_pct),
        ]
    )
    return {
        "action_id": hashlib.sha256(key.encode()).hexdigest()[:24],
        "action_type": action_type,
        "source": MCP,
        "entity_type": proposal.entity_type,
        "entity_id": proposal.entity_id,
        "company_id": company_id,
        "reason": f"MCP client {client.name} proposes {action_type}",
        "payload": json.dumps(payload, sort_keys=True, default=str),
        "facts": json.dumps(facts, sort_keys=True, default=str),
    }
