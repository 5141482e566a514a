"""Holdouts: a randomized share of every playbook's entities that never gets its actions.

A playbook is what Revorch does to an entity: each handoff (``handoff/follow_up_cadence``, the
cadence change; ``handoff/sla_escalations``, ...) and each action type an agent proposes
(``lead_qualification/send_follow_up``). When an action is first proposed for an entity, the
policy assigns that (playbook, entity) to ``treatment`` or ``holdout`` by the entity's hash
draw (:mod:`revorch.experiments.assignment`) against the playbook's share, and records it with
the moment of that first assignment (its exposure) in ``governance.holdout_assignments``. A
held-out entity's actions are ``withheld``: judged, audited, never sent. The holdout is a
policy verdict: agents propose the same actions whatever the arm.

The policy (``holdouts`` in config/policy.yaml) bounds the shares: at least ``minimum_share``
for every playbook (an experiment needs a control group) and at most
``maximum_customer_facing_share`` for one that reaches customers (withholding a follow-up has a
cost). ``switched_off`` turns a playbook's holdout off, with who and why; that is audited once
per policy version.
"""

from __future__ import annotations

from datetime import date, datetime

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from revorch.experiments.assignment import assignment_unit
from revorch.governance.actions import (
    AGENT_ACTIONS,
    CUSTOMER_FACING,
    GOVERNANCE,
    HANDOFF_ACTIONS,
    MCP,
)
from revorch.governance.audit import AuditEvent

HOLDOUT, TREATMENT = "holdout", "treatment"
WITHHELD = "withheld"


def playbook_of(source: str, action_type: str) -> str | None:
    """The playbook an action belongs to; None for the approval queue's own escalations."""
    if source in (GOVERNANCE, MCP):  # one-off requests, not playbooks
        return None
    if source in HANDOFF_ACTIONS:
        return source
    return f"{source}/{action_type}"


# Every playbook, and the action type it sends.
PLAYBOOK_ACTIONS: dict[str, str] = {
    **HANDOFF_ACTIONS,
    **{f"{agent}/{action}": action for (agent, _), (action, _) in AGENT_ACTIONS.items()},
}
PLAYBOOKS = frozenset(PLAYBOOK_ACTIONS)
CUSTOMER_FACING_PLAYBOOKS = frozenset(
    p for p, action in PLAYBOOK_ACTIONS.items() if action in CUSTOMER_FACING
)


class SwitchedOff(BaseModel):
    """An operator's decision to run a playbook without a holdout: everyone gets it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    playbook: str
    by: str = Field(min_length=1, description="who switched it off")
    reason: str

    @model_validator(mode="after")
    def _documented(self) -> SwitchedOff:
        if self.playbook not in PLAYBOOKS:
            raise ValueError(
                f"holdouts.switched_off: unknown playbook {self.playbook!r}; "
                f"known: {sorted(PLAYBOOKS)}"
            )
        if len(self.reason.strip()) < 10:
            raise ValueError(
                f"holdouts.switched_off ({self.playbook}): a documented reason is required"
            )
        return self


class Holdouts(BaseModel):
    """The holdout share of every playbook, within the policy's bounds (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_share: float = Field(default=0.10, ge=0.0, lt=1.0)
    minimum_share: float = Field(default=0.05, ge=0.0, lt=1.0)
    maximum_customer_facing_share: float = Field(default=0.20, gt=0.0, lt=1.0)
    shares: dict[str, float] = Field(default_factory=dict)
    switched_off: list[SwitchedOff] = Field(default_factory=list)
    # The read-out, registered in advance (revorch/experiments/uplift.py): each entity's
    # outcome is read this many days after its exposure (renewals: renewal_horizon_days) ...
    horizon_days: int = Field(default=30, ge=1)
    renewal_horizon_days: int = Field(default=120, ge=1)
    # ... and the estimate is final on this date; before it, every look is interim.
    analysis_date: date | None = None

    @model_validator(mode="after")
    def _within_bounds(self) -> Holdouts:
        unknown = sorted(set(self.shares) - PLAYBOOKS)
        if unknown:
            raise ValueError(f"holdouts.shares: unknown playbooks {unknown}")
        off = [s.playbook for s in self.switched_off]
        if len(set(off)) != len(off):
            raise ValueError(f"holdouts.switched_off names a playbook twice: {off}")
        if self.minimum_share > self.maximum_customer_facing_share:
            raise ValueError(
                "holdouts.minimum_share is above maximum_customer_facing_share: no "
                "customer-facing playbook could satisfy both"
            )
        for playbook in sorted(PLAYBOOKS - set(off)):
            share = self.shares.get(playbook, self.default_share)
            if not 0.0 <= share < 1.0:
                raise ValueError(f"holdouts: {playbook} share {share} must be in [0, 1)")
            if share < self.minimum_share:
                raise ValueError(
                    f"holdouts: {playbook} holds out {share:.0%}, below the policy's minimum "
                    f"of {self.minimum_share:.0%}; raise it, or switch its holdout off under "
                    f"holdouts.switched_off with who and why"
                )
            if playbook in CUSTOMER_FACING_PLAYBOOKS and share > self.maximum_customer_facing_share:
                raise ValueError(
                    f"holdouts: {playbook} is customer-facing and holds out {share:.0%}, above "
                    f"the policy's maximum of {self.maximum_customer_facing_share:.0%}"
                )
        return self

    def switched_off_reason(self, playbook: str) -> SwitchedOff | None:
        return next((s for s in self.switched_off if s.playbook == playbook), None)

    def share(self, playbook: str) -> float:
        """The playbook's holdout share now (0 when switched off)."""
        if self.switched_off_reason(playbook):
            return 0.0
        return self.shares.get(playbook, self.default_share)


# The pairs already assigned among a slice's: a join on the key's columns. (Matching a
# concatenation of them built one string per stored row: at ten million contacts each of the
# verdicts' and the dispatcher's slices did that for the 7M rows every earlier slice wrote.)
ASSIGNED_SQL = """
SELECT a.playbook, a.entity_type, a.entity_id, a.arm
FROM governance.holdout_assignments AS a
JOIN (SELECT unnest($playbooks) AS playbook, unnest($types) AS entity_type,
             unnest($ids) AS entity_id) AS wanted
  USING (playbook, entity_type, entity_id)
"""


def assign(
    conn: duckdb.DuckDBPyConnection,
    holdouts: Holdouts,
    policy_version: str,
    actions: list[dict],
    *,
    now: datetime,
    run_id: str | None,
) -> tuple[dict[str, str], list[AuditEvent]]:
    """Each action's arm (by ``action_id``; actions of no playbook are left out), assigning
    the (playbook, entity) pairs seen for the first time. Returns the arms and the audit
    events to append in the caller's transaction: one ``holdout_switched_off`` per playbook
    switched off under a policy version not yet in the trail."""
    keyed = {}
    for action in actions:
        playbook = playbook_of(action["source"], action["action_type"])
        if playbook is not None:
            keyed[action["action_id"]] = (playbook, action["entity_type"], action["entity_id"])
    if not keyed:
        return {}, []
    playbooks, types, ids = zip(*sorted(set(keyed.values())), strict=True)
    wanted = {"playbooks": list(playbooks), "types": list(types), "ids": list(ids)}
    known = {(p, t, e): arm for p, t, e, arm in conn.execute(ASSIGNED_SQL, wanted).fetchall()}
    new_rows, events = [], []
    for action in actions:
        key = keyed.get(action["action_id"])
        if key is None or key in known:
            continue
        playbook, entity_type, entity_id = key
        unit = assignment_unit(playbook, entity_type, entity_id)
        share = holdouts.share(playbook)
        arm = HOLDOUT if unit < share else TREATMENT
        known[key] = arm
        new_rows.append(
            {
                "playbook": playbook,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "company_id": action["company_id"],
                "arm": arm,
                "randomized": holdouts.switched_off_reason(playbook) is None,
                "unit": unit,
                "share": share,
                "policy_version": policy_version,
                "exposed_at": now,
                "first_action_id": action["action_id"],
                "run_id": run_id,
            }
        )
    if new_rows:
        frame = pl.DataFrame(new_rows, schema_overrides={"exposed_at": pl.Datetime("us", "UTC")})
        conn.register("new_assignments", frame)
        conn.execute(
            "INSERT INTO governance.holdout_assignments BY NAME SELECT * FROM new_assignments"
        )
        conn.unregister("new_assignments")
    events.extend(_switched_off_events(conn, holdouts, policy_version))
    return {action_id: known[key] for action_id, key in keyed.items()}, events


def _switched_off_events(
    conn: duckdb.DuckDBPyConnection, holdouts: Holdouts, policy_version: str
) -> list[AuditEvent]:
    """The operator's switch-offs under this policy version, once each in the trail."""
    if not holdouts.switched_off:
        return []
    recorded = {
        playbook
        for (playbook,) in conn.execute(
            "SELECT detail->>'playbook' FROM governance.audit_log "
            "WHERE event = 'holdout_switched_off' AND (detail->>'policy_version') = ?",
            [policy_version],
        ).fetchall()
    }
    return [
        AuditEvent(
            "holdout_switched_off",
            f"human:{off.by}",
            {"playbook": off.playbook, "reason": off.reason, "policy_version": policy_version},
        )
        for off in holdouts.switched_off
        if off.playbook not in recorded
    ]


def withheld_event(action: dict, playbook: str, policy_version: str, stage: str) -> AuditEvent:
    """The trail's record that an action was kept from a held-out entity."""
    return AuditEvent(
        WITHHELD,
        f"policy:{policy_version}",
        {
            "playbook": playbook,
            "arm": HOLDOUT,
            "stage": stage,
            "action_type": action["action_type"],
        },
        action_id=action["action_id"],
        entity_type=action["entity_type"],
        entity_id=action["entity_id"],
        company_id=action["company_id"],
    )


def withheld_update(action: dict, playbook: str, policy_version: str) -> dict:
    return {
        "action_id": action["action_id"],
        "status": WITHHELD,
        "verdict": "withhold",
        "policy_version": policy_version,
        "verdict_rules": [f"holdout:{playbook}"],
        "approval_due_at": None,
        "resolution": f"held out of {playbook} (control group): never sent",
    }
