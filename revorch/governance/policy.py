"""The policy (config/policy.yaml): what each source may do by itself, what waits for a
person, and what is never done. Validated when it is loaded; every verdict names the
policy's content hash, so a verdict can always be traced to the exact rules that gave it.

A verdict is ``allow`` (dispatch without asking), ``approve`` (wait for a person) or
``forbid`` (never dispatch). The table ``sources`` gives each (source, action type) its
verdict; a pair it does not list is forbidden. ``rules`` can only make a verdict stricter:
the strictest verdict of the table and every matching rule wins.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from revorch.config_file import CONFIG_DIR, load_yaml_model
from revorch.governance.actions import ACTION_TYPES, FACTS, SOURCES

DEFAULT_PATH = CONFIG_DIR / "policy.yaml"

Verdict = Literal["allow", "approve", "forbid"]
STRICTNESS: dict[str, int] = {"allow": 0, "approve": 1, "forbid": 2}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Condition(_Strict):
    """A test on one fact. Every bound given must hold; a missing fact never matches."""

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

    def holds(self, value: object) -> bool:
        if value is None:
            return False
        if self.in_ is not None and value not in self.in_:
            return False
        if self.equals is not None and value != self.equals:
            return False
        bounds = (self.above, self.at_least, self.below, self.at_most)
        if any(b is not None for b in bounds):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
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

    def matches(self, action_type: str, source: str, facts: dict) -> bool:
        return (
            (self.actions is None or action_type in self.actions)
            and (self.sources is None or source in self.sources)
            and all(condition.holds(facts.get(name)) for name, condition in self.when.items())
        )


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


class Policy(_Strict):
    version: str
    sources: dict[str, dict[str, Verdict]]
    rules: list[Rule] = Field(default_factory=list)
    approvals: Approvals
    data_handling: DataHandling = Field(default_factory=DataHandling)

    @model_validator(mode="after")
    def _names_known_things(self) -> Policy:
        _known("source", list(self.sources), SOURCES, "sources")
        for source, table in self.sources.items():
            _known("action type", list(table), ACTION_TYPES, f"sources.{source}")
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        return self

    @property
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
            if rule.matches(action_type, source, facts):
                reasons.append(rule.name)
                if STRICTNESS[rule.verdict] > STRICTNESS[verdict]:
                    verdict = rule.verdict
        return Judgement(verdict, tuple(reasons), self.digest)


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


def load_policy(path: str | Path = DEFAULT_PATH) -> Policy:
    return load_yaml_model(path, Policy, PolicyError, "policy")
