"""Actions: everything Revorch would do outside itself, proposed as records, never done here.

Agents recommend (``next_action`` in their output) and handoffs call for work (an SLA
breach, a renewal at risk, a won deal to onboard). ``propose`` turns each into an action in
``governance.actions`` with its reason, the decision behind it, a payload for its target and
the facts the policy judges it by. Who receives an action (``payload.to``) comes from the
state store, never from an agent's text. What an agent wrote in words (its reasons, a plan's
summary and steps) is kept apart, in ``payload.model_text``, marked untrusted: the reason and
the rest of the payload hold only facts and values the schema bounds. Each (source, entity,
recommendation) is proposed once: re-delivered events and re-run steps find it there and add
nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from revorch import clock
from revorch.agents import incremental
from revorch.agents.features import ModelsConfig
from revorch.governance import open_items
from revorch.governance.audit import SLICES_PER_TRANSACTION, AuditEvent, audited
from revorch.state.backend import claim, retry_conflicts

CANDIDATES_SQL = (Path(__file__).parent / "candidate_actions.sql").read_text()

# (agent, its recommendation) -> (action type, entity type). A recommendation not listed here
# (no_action) proposes nothing.
AGENT_ACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("lead_qualification", "fast_track_to_sales"): ("assign_owner", "contact"),
    ("lead_qualification", "accelerate_follow_up"): ("send_follow_up", "contact"),
    ("lead_qualification", "nurture"): ("send_follow_up", "contact"),
    ("lead_qualification", "disqualify"): ("update_crm_field", "contact"),
    ("deal_risk", "re_engage_champion"): ("send_follow_up", "deal"),
    ("deal_risk", "exec_sponsor_outreach"): ("notify_manager", "deal"),
    ("deal_risk", "discount_review"): ("offer_discount", "deal"),
    ("ticket_triage", "route_to_support"): ("route_ticket", "ticket"),
    ("ticket_triage", "billing_review"): ("route_ticket", "ticket"),
    ("ticket_triage", "notify_engineering"): ("notify_engineering", "ticket"),
    ("ticket_triage", "escalate_to_csm"): ("notify_csm", "ticket"),
    ("renewal_risk", "csm_outreach"): ("notify_csm", "subscription"),
    ("renewal_risk", "executive_business_review"): ("escalate_renewal_risk", "subscription"),
    ("renewal_risk", "renewal_discount_review"): ("offer_discount", "subscription"),
    ("onboarding_plan", "send_plan_to_customer"): ("send_plan_to_customer", "onboarding"),
    ("onboarding_plan", "assign_csm_review"): ("create_onboarding_tasks", "onboarding"),
}

# Who acts on each action type.
RECIPIENT_ROLE = {
    "assign_owner": "sales_ops",
    "send_follow_up": "owner",
    "update_crm_field": "crm",
    "offer_discount": "owner",
    "notify_manager": "manager",
    "notify_csm": "csm",
    "notify_engineering": "engineering",
    "route_ticket": "support",
    "escalate_renewal_risk": "csm",
    "create_onboarding_tasks": "csm",
    "send_plan_to_customer": "customer",
    "notify_approver": "approver",
}
ACTION_TYPES = frozenset(RECIPIENT_ROLE)
# Actions that reach a customer or prospect rather than a colleague.
CUSTOMER_FACING = frozenset({"send_follow_up", "offer_discount", "send_plan_to_customer"})

# Each handoff and the one action type it calls for (candidate_actions.sql).
HANDOFF_ACTIONS = {
    "handoff/follow_up_cadence": "send_follow_up",
    "handoff/sla_escalations": "notify_manager",
    "handoff/renewal_risk": "escalate_renewal_risk",
    "handoff/onboarding": "create_onboarding_tasks",
}
HANDOFF_SOURCES = tuple(HANDOFF_ACTIONS)
GOVERNANCE = "governance"  # the approval queue's own escalations
# Proposals of the clients of Revorch's MCP server (revorch/mcp): each action type a client may
# ask for, and the entity types it may name. A client's words travel as untrusted model text.
MCP = "mcp"
MCP_ACTIONS: dict[str, frozenset[str]] = {
    "send_follow_up": frozenset({"contact", "deal"}),
    "offer_discount": frozenset({"deal", "subscription"}),
    "notify_manager": frozenset({"contact", "deal"}),
    "notify_csm": frozenset({"company", "subscription"}),
    "escalate_renewal_risk": frozenset({"subscription"}),
}
SOURCES = frozenset(
    {agent for agent, _ in AGENT_ACTIONS} | set(HANDOFF_SOURCES) | {GOVERNANCE, MCP}
)

# What a policy rule may test (docs/governance.md explains each).
FACTS = frozenset(
    {
        "tier",  # offline, llm or rule: who decided
        "confidence",
        "amount",  # deal amount, subscription ARR or the account's active ARR
        "risk_score",
        "discount_pct",
        "account_tier",  # strategic, enterprise, mid_market, smb
        "customer_age_days",  # days since the account's first subscription started
        "customer_facing",
        "is_customer",  # the account has a subscription or a won deal
        "model_written",  # the action carries text an agent's model (the LLM tier) wrote
    }
)
# The facts a compromised model chooses (its answer's numbers); the others come from the CRM.
MODEL_CHOSEN_FACTS = frozenset({"confidence", "risk_score", "discount_pct"})
# Where an agent's words travel in a payload: apart from the facts, marked untrusted.
MODEL_TEXT = "model_text"

# An offered discount grows with the risk the agent saw, up to this; the policy judges it.
MAX_DISCOUNT_PCT = 30
FOLLOW_UP_CADENCE = {
    "accelerate_follow_up": "accelerated",
    "nurture": "nurture",
    "re_engage_champion": "re_engage",
}


# Candidates proposed per slice: a slice's rows and audit events are all that is held in
# Python at once (a first run proposes about 800,000 actions at a million contacts).
SLICE_ROWS = 20_000
CANDIDATE_SLICE_SQL = """
SELECT * EXCLUDE (slice_row) FROM proposal_candidates
WHERE slice_row > $after AND slice_row <= $after + $slice
ORDER BY slice_row
"""


def propose(
    conn: duckdb.DuckDBPyConnection,
    *,
    run_id: str | None,
    anchor_path: Path | None,
    full: bool = False,
    slice_rows: int = SLICE_ROWS,
    models: ModelsConfig | None = None,
    slices_per_transaction: int = SLICES_PER_TRANSACTION,
) -> int:
    """Propose every new action; return how many. Each is recorded with a ``proposed``
    audit event (and a ``decided`` one for the agent decision behind it). Looks only at
    what changed since the last proposal (revorch/governance/open_items.py); ``full`` looks
    at everything, and finds the same actions. ``slice_rows`` candidates at a time (in
    ``action_id`` order, as a whole), committed ``slices_per_transaction`` slices at a time:
    the proposals' watermarks are taken out at the first commit and written with the last,
    so a run that dies part-way leaves the next one looking at everything (the candidates
    skip the actions already proposed). On DuckLake a commit that conflicts with a concurrent
    writer's runs again on the newer snapshot, which then holds what the other one proposed.
    ``models``: the features the agents declare (config/agents.yaml ``models:``), with which
    their inputs are read again."""
    return retry_conflicts(
        lambda: _propose(
            conn, run_id, anchor_path, full, slice_rows, models, slices_per_transaction
        )
    )


def _propose(
    conn: duckdb.DuckDBPyConnection,
    run_id: str | None,
    anchor_path: Path | None,
    full: bool,
    slice_rows: int,
    models: ModelsConfig | None,
    slices_per_transaction: int,
) -> int:
    action_map = pl.DataFrame(
        [
            {"source": agent, "recommendation": rec, "action_type": t, "entity_type": e}
            for (agent, rec), (t, e) in AGENT_ACTIONS.items()
        ]
    )
    proposed = 0
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        # On DuckLake: conflict with an agent run recording decisions at the same time, so
        # the decisions mark (open_items.refresh) never passes a decision this snapshot lacks.
        claim(conn, "agents")
        refreshed = open_items.refresh(conn, full=full, models=models)
        conn.register("action_map", action_map)
        conn.register("proposal_scope", refreshed.items)
        # Kept by DuckDB (spilling past its memory cap), read back a slice at a time.
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE proposal_candidates AS SELECT "
            f"row_number() OVER (ORDER BY action_id) AS slice_row, * FROM ({CANDIDATES_SQL}\n)",
            {
                "everything": sorted(refreshed.everything),
                "decided_after": refreshed.decided_after,
            },
        )
        conn.unregister("action_map")
        conn.unregister("proposal_scope")
        now = clock.now(conn)
        after, held_marks = 0, None
        while True:
            cursor = conn.execute(CANDIDATE_SLICE_SQL, {"after": after, "slice": slice_rows})
            names = [column[0] for column in cursor.description]
            candidates = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            if not candidates:
                break
            rows = [_action_row(c, now, run_id) for c in candidates]
            for candidate, row in zip(candidates, rows, strict=True):
                trail.extend(_proposal_events(candidate, row))
            frame = pl.DataFrame(rows, schema_overrides={"proposed_at": pl.Datetime("us", "UTC")})
            conn.register("new_actions", frame)
            conn.execute(
                "INSERT INTO governance.actions BY NAME "
                "SELECT *, proposed_at AS updated_at, 'proposed' AS status FROM new_actions"
            )
            conn.unregister("new_actions")
            trail.flush()
            proposed += len(rows)
            after += slice_rows
            if after % (slice_rows * slices_per_transaction) == 0:
                held_marks = held_marks or _take_marks(conn)
                trail.commit()
        for name, load_id, as_of, version_key, _updated_at in held_marks or []:
            incremental.save(conn, name, incremental.Watermark(load_id, as_of, version_key))
        conn.execute("DROP TABLE proposal_candidates")
        trail.extend(_refused_outputs(conn))
    return proposed


def _take_marks(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Take the proposals' watermarks (open_items.refresh wrote them in this transaction) out
    until the last slice is in: committed before, they would tell the next run that every
    candidate was proposed."""
    rows = conn.execute(
        "SELECT * FROM agents.watermarks WHERE starts_with(agent, 'proposals/')"
    ).fetchall()
    conn.execute("DELETE FROM agents.watermarks WHERE starts_with(agent, 'proposals/')")
    return rows


def _action_row(candidate: dict, now: datetime, run_id: str | None) -> dict:
    details = json.loads(candidate["details"]) if candidate["details"] else {}
    action_type = candidate["action_type"]
    recommendation = candidate["dedup_key"] if candidate["decision_id"] else None
    payload: dict = {
        "to": {"role": RECIPIENT_ROLE[action_type], "owner_id": candidate["owner_id"]},
        **_payload_details(action_type, recommendation, details),
    }
    if recommendation:
        payload["recommendation"] = recommendation
        payload[MODEL_TEXT] = _model_text(candidate, action_type, details)
        reason = f"{candidate['source']} recommends {recommendation}"
    else:
        reason = candidate["reason"] or candidate["source"]
    facts = {
        "tier": candidate["tier"],
        "confidence": candidate["confidence"],
        "amount": candidate["amount"],
        "risk_score": candidate["risk_score"],
        "discount_pct": payload.get("discount_pct"),
        "account_tier": candidate["account_tier"],
        "customer_age_days": candidate["customer_age_days"],
        "customer_facing": action_type in CUSTOMER_FACING,
        "is_customer": candidate["is_customer"],
        "model_written": bool(recommendation) and candidate["tier"] == "llm",
    }
    return {
        "action_id": candidate["action_id"],
        "action_type": action_type,
        "source": candidate["source"],
        "decision_id": candidate["decision_id"],
        "entity_type": candidate["entity_type"],
        "entity_id": candidate["entity_id"],
        "company_id": candidate["company_id"],
        "reason": reason,
        "payload": json.dumps(payload, sort_keys=True, default=str),
        "facts": json.dumps(facts, sort_keys=True),
        "proposed_at": now,
        "proposed_run_id": run_id,
    }


def _payload_details(action_type: str, recommendation: str | None, details: dict) -> dict:
    """What the target needs to carry the action out, from the agent's output or the handoff."""
    if recommendation is None:  # a handoff: its details as they are
        return details
    match action_type:
        case "offer_discount":
            risk = details.get("risk_score") or 0.0
            return {
                "discount_pct": round(MAX_DISCOUNT_PCT * risk),
                "risk_level": details.get("risk_level"),
            }
        case "send_follow_up":
            return {"cadence": FOLLOW_UP_CADENCE[recommendation]}
        case "update_crm_field":
            return {"field": "lead_status", "value": "unqualified"}
        case "assign_owner":
            return {"assign_to_role": "ae", "intent_score": details.get("intent_score")}
        case "route_ticket":
            queue = "billing" if recommendation == "billing_review" else details.get("intent")
            return {"queue": queue, "severity": details.get("severity")}
        case "notify_engineering" | "notify_csm" if "severity" in details:
            return {"severity": details["severity"], "churn_signal": details.get("churn_signal")}
        case "create_onboarding_tasks" | "send_plan_to_customer":
            return {}  # the plan is words: it travels in model_text
        case _:
            return {
                "risk_level": details.get("risk_level"),
                "risk_score": details.get("risk_score"),
            }


def _model_text(candidate: dict, action_type: str, details: dict) -> dict:
    """An agent's words, marked with who wrote them; the dispatcher screens them."""
    text: dict = {
        "written_by": f"agent:{candidate['source']} ({candidate['tier']} tier)",
        "untrusted": True,
        "reasons": details.get("reasons", []),
    }
    if action_type in ("create_onboarding_tasks", "send_plan_to_customer"):
        text |= {"summary": details.get("summary"), "steps": details.get("steps", [])}
    return text


def _proposal_events(candidate: dict, row: dict) -> list[AuditEvent]:
    where = {
        "action_id": row["action_id"],
        "entity_type": row["entity_type"],
        "entity_id": row["entity_id"],
        "company_id": row["company_id"],
    }
    events = []
    if row["decision_id"]:
        events.append(
            AuditEvent(
                "decided",
                f"agent:{row['source']}",
                {
                    "recommendation": candidate["dedup_key"],
                    "tier": candidate["tier"],
                    "confidence": candidate["confidence"],
                },
                decision_id=row["decision_id"],
                **where,
            )
        )
    events.append(
        AuditEvent(
            "proposed",
            row["source"],
            {"action_type": row["action_type"], "reason": row["reason"], "facts": row["facts"]},
            decision_id=row["decision_id"],
            **where,
        )
    )
    return events


def _refused_outputs(conn: duckdb.DuckDBPyConnection) -> list[AuditEvent]:
    """Model answers that broke the schema or the allow-list, not yet in the trail."""
    rows = conn.execute(
        """
        SELECT d.decision_id, d.agent, d.entity_id, d.input->>'company_id', d.fallback_reason,
               left(d.raw_output, 500), d.run_id
        FROM agents.decisions AS d
        WHERE d.fallback_reason IN ('invalid_output', 'refusal')
          AND NOT EXISTS (
              SELECT 1 FROM governance.audit_log AS a
              WHERE a.event = 'output_refused' AND a.decision_id = d.decision_id
                AND (a.detail->>'decision_run_id') IS NOT DISTINCT FROM d.run_id)
        ORDER BY d.decided_at, d.decision_id
        """
    ).fetchall()
    return [
        AuditEvent(
            "output_refused",
            f"agent:{agent}",
            {"why": why, "raw_output": raw, "decision_run_id": decision_run},
            decision_id=decision_id,
            entity_id=entity_id,
            company_id=company_id,
        )
        for decision_id, agent, entity_id, company_id, why, raw, decision_run in rows
    ]
