"""The policy (config/policy.yaml): what each source may do by itself, what waits for a
person, and what is never done. Validated when it is loaded; every verdict names the
policy's content hash, so a verdict can always be traced to the exact rules that gave it.

A verdict is ``allow`` (dispatch without asking), ``approve`` (wait for a person) or
``forbid`` (never dispatch). The table ``sources`` gives each (source, action type) its
verdict; a pair it does not list is forbidden. ``rules`` can only make a verdict stricter:
the strictest verdict of the table and every matching rule wins.

The policy fails closed. A fact a rule needs that is missing or unknown never lets an action
through: the rule then asks for a person. And an action that reaches a customer with content
an agent's model wrote always waits for a person, unless ``trusted_model_text`` names its
agent and action type with a reason (:func:`revorch.governance.policy_check.check` shows what a
compromised model could still get sent).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from revorch.config_file import CONFIG_DIR, load_yaml_model
from revorch.governance.actions import (
    ACTION_TYPES,
    AGENT_ACTIONS,
    CUSTOMER_FACING,
    FACTS,
    MCP,
    MCP_ACTIONS,
    SOURCES,
)
from revorch.governance.holdouts import Holdouts

DEFAULT_PATH = CONFIG_DIR / "policy.yaml"

Verdict = Literal["allow", "approve", "forbid"]
STRICTNESS: dict[str, int] = {"allow": 0, "approve": 1, "forbid": 2}
AGENTS = frozenset(agent for agent, _ in AGENT_ACTIONS)
# (agent, action type) pairs an agent can propose.
AGENT_PAIRS = frozenset((agent, action) for (agent, _), (action, _) in AGENT_ACTIONS.items())
# Every (source, action type) whose text a model or an outside assistant (an MCP client) wrote.
MODEL_PAIRS = AGENT_PAIRS | {(MCP, action) for action in MCP_ACTIONS}
# The built-in rule of the model's text, named in verdicts like any rule.
MODEL_TEXT_RULE = "model_written_customer_facing_needs_approval"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(_Strict):
    """A test on one fact. Every bound given must hold. A missing fact, or one of the wrong
    kind for the test (text for a number), is unknown: :meth:`evaluate` says ``None``."""

    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None
    in_: list[str | bool] | None = Field(default=None, alias="in")
    equals: str | bool | float | None = None

    @model_validator(mode="after")
    def _says_something(self) -> Condition:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a condition needs at least one of above, at_least, below, ...")
        return self

    def evaluate(self, value: object) -> bool | None:
        """True or False when the fact is known; None when it is missing or not comparable."""
        if value is None:
            return None
        if self.in_ is not None and value not in self.in_:
            return False
        if self.equals is not None and value != self.equals:
            return False
        bounds = (self.above, self.at_least, self.below, self.at_most)
        if any(b is not None for b in bounds):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            if self.above is not None and not value > self.above:
                return False
            if self.at_least is not None and not value >= self.at_least:
                return False
            if self.below is not None and not value < self.below:
                return False
            if self.at_most is not None and not value <= self.at_most:
                return False
        return True


class Rule(_Strict):
    name: str
    description: str | None = None
    actions: list[str] | None = None  # None: every action type
    sources: list[str] | None = None  # None: every source
    when: dict[str, Condition] = Field(default_factory=dict)
    verdict: Verdict

    @model_validator(mode="after")
    def _names_known_things(self) -> Rule:
        _known("action type", self.actions or [], ACTION_TYPES, f"rule {self.name}")
        _known("source", self.sources or [], SOURCES, f"rule {self.name}")
        _known("fact", list(self.when), FACTS, f"rule {self.name}")
        return self

    def applies_to(self, action_type: str, source: str) -> bool:
        return (self.actions is None or action_type in self.actions) and (
            self.sources is None or source in self.sources
        )

    def evaluate(self, action_type: str, source: str, facts: dict) -> bool | None:
        """True if every condition holds, False if one does not, None (unknown) if none
        fails but a fact one needs is missing or unknown."""
        if not self.applies_to(action_type, source):
            return False
        outcomes = [c.evaluate(facts.get(name)) for name, c in self.when.items()]
        if False in outcomes:
            return False
        return None if None in outcomes else True

    def unknown_facts(self, facts: dict) -> list[str]:
        return [name for name, c in self.when.items() if c.evaluate(facts.get(name)) is None]


class Approvals(_Strict):
    sla_hours: float = Field(gt=0, description="a pending approval escalates after this")
    expire_hours: float = Field(gt=0, description="and is closed unapproved after this")
    escalate_to_role: str = "manager"

    @model_validator(mode="after")
    def _expires_after_escalating(self) -> Approvals:
        if self.expire_hours <= self.sla_hours:
            raise ValueError("approvals.expire_hours must be longer than approvals.sla_hours")
        return self


class DataHandling(_Strict):
    # Action types whose payload may carry the real names, emails and phones back (agents'
    # reasons hold placeholders); every other action leaves with the placeholders.
    restore_personal_data_for: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names_known_actions(self) -> DataHandling:
        _known("action type", self.restore_personal_data_for, ACTION_TYPES, "data_handling")
        return self


class TrustedModelText(_Strict):
    """An agent whose model-written content may reach customers through one action type
    without a person reading it first; ``reason`` says why, for the next reader."""

    source: str
    action: str
    reason: str

    @model_validator(mode="after")
    def _is_a_documented_customer_facing_pair(self) -> TrustedModelText:
        where = f"trusted_model_text ({self.source}, {self.action})"
        if (self.source, self.action) not in AGENT_PAIRS:
            raise ValueError(f"{where}: {self.source} never proposes {self.action}")
        if self.action not in CUSTOMER_FACING:
            raise ValueError(f"{where}: {self.action} is not customer-facing; nothing to trust")
        if len(self.reason.strip()) < 10:
            raise ValueError(f"{where}: a documented reason is required (reason: ...)")
        return self


class Policy(_Strict):
    version: str
    sources: dict[str, dict[str, Verdict]]
    rules: list[Rule] = Field(default_factory=list)
    approvals: Approvals
    data_handling: DataHandling = Field(default_factory=DataHandling)
    # Customer-facing (agent, action type) pairs whose model-written content may leave
    # without a person. Empty: every such action waits for approval.
    trusted_model_text: list[TrustedModelText] = Field(default_factory=list)
    # Every playbook's randomized holdout (revorch/governance/holdouts.py).
    holdouts: Holdouts = Field(default_factory=Holdouts)

    @model_validator(mode="after")
    def _names_known_things(self) -> Policy:
        _known("source", list(self.sources), SOURCES, "sources")
        for source, table in self.sources.items():
            _known("action type", list(table), ACTION_TYPES, f"sources.{source}")
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        return self

    def trusts_model_text(self, source: str, action_type: str) -> bool:
        return any(t.source == source and t.action == action_type for t in self.trusted_model_text)

    @cached_property
    def digest(self) -> str:
        """The policy's version for verdicts: a hash of its content, not of its layout."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def judge(self, action_type: str, source: str, facts: dict) -> Judgement:
        """The verdict for one action, and the table entry and rules that gave it."""
        base = self.sources.get(source, {}).get(action_type, "forbid")
        verdict, reasons = base, [f"sources.{source}.{action_type}={base}"]
        if base == "forbid" and action_type not in self.sources.get(source, {}):
            reasons = [f"{source} may not {action_type} (not in sources)"]
        for rule in self.rules:
            outcome = rule.evaluate(action_type, source, facts)
            if outcome is False:
                continue
            stricter = rule.verdict
            if outcome is None:
                # Cannot tell whether the rule holds: a person decides (fail closed).
                if STRICTNESS[rule.verdict] == 0:
                    continue
                stricter = "approve"
                reasons.append(f"{rule.name} (unknown: {', '.join(rule.unknown_facts(facts))})")
            else:
                reasons.append(rule.name)
            if STRICTNESS[stricter] > STRICTNESS[verdict]:
                verdict = stricter
        if self._model_text_to_customer(action_type, source, facts):
            reasons.append(MODEL_TEXT_RULE)
            if STRICTNESS[verdict] < STRICTNESS["approve"]:
                verdict = "approve"
        return Judgement(verdict, tuple(reasons), self.digest)

    def _model_text_to_customer(self, action_type: str, source: str, facts: dict) -> bool:
        """A customer-facing action of an agent carrying (or maybe carrying: unknown counts)
        content its model wrote, and no trust in the policy for that pair. An MCP client's
        words count as a model's: an assistant wrote them."""
        return (
            action_type in CUSTOMER_FACING
            and (source in AGENTS or source == MCP)
            and facts.get("model_written") is not False
            and not self.trusts_model_text(source, action_type)
        )


@dataclass(frozen=True)
class Judgement:
    verdict: str
    rules: tuple[str, ...]
    policy_version: str


class PolicyError(ValueError):
    pass


def _known(kind: str, names: list[str], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {kind} {unknown}; known: {sorted(known)}")


def load_policy(path: str | Path = DEFAULT_PATH, *, text: str | None = None) -> Policy:
    return load_yaml_model(path, Policy, PolicyError, "policy", text=text)
