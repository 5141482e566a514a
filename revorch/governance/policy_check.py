"""What a compromised model could get dispatched without a person, under a policy.

A compromised model answers inside the schema with whatever it likes: it chooses the numbers
of its answer (:data:`~revorch.governance.actions.MODEL_CHOSEN_FACTS`) and every word of its
text; its decisions are on the LLM tier. The CRM's facts (amount, account tier, customer age,
...) it does not choose, but they may be anything, unknown included. For every (agent, action
type) pair an agent can propose, :func:`check` tries every combination of fact values that
can change a rule's outcome (each bound, just below and above it, each listed value, another
value, unknown) and collects the ones the policy allows.

A pair is *open* when some combination is allowed without a person. An open pair that reaches
a customer with text the model wrote is a problem and fails the check; so does a policy that
puts personal data back into a customer-facing action's model text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from revorch.governance.actions import (
    CUSTOMER_FACING,
    FACTS,
    MCP,
    MODEL_CHOSEN_FACTS,
)
from revorch.governance.policy import MODEL_PAIRS, Condition, Policy

ACCOUNT_TIERS = ("strategic", "enterprise", "mid_market", "smb")
OTHER = "<another value>"
# What each fact can be: a compromised model keeps its numbers in the schema's ranges.
RANGES = {"confidence": (0.0, 1.0), "risk_score": (0.0, 1.0), "discount_pct": (0, 30)}


@dataclass
class PairReport:
    source: str
    action_type: str
    customer_facing: bool
    allowed: list[dict] = field(default_factory=list)  # fact combinations sent without a person
    allowed_by: set[str] = field(default_factory=set)
    held_by: set[str] = field(default_factory=set)  # rules that held every other combination
    forbidden: bool = False
    grid: dict[str, list] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return bool(self.allowed)

    @property
    def problem(self) -> bool:
        return self.open and self.customer_facing

    def when(self) -> str:
        """The facts that decide, with the values (of those tried) that let it through."""
        parts = []
        for name, values in self.grid.items():
            seen = list(dict.fromkeys(combination[name] for combination in self.allowed))
            if len(seen) < len(values):
                parts.append(f"{name} in {{{', '.join(_show(v) for v in seen)}}}")
        return "when " + "; ".join(parts) if parts else "whatever the facts"

    def line(self) -> str:
        where = f"{self.source} {self.action_type}"
        kind = "customer-facing, model text" if self.customer_facing else "to colleagues or CRM"
        if self.forbidden:
            return (
                f"closed   {where} ({kind}): never dispatched ({', '.join(sorted(self.held_by))})"
            )
        if not self.open:
            return (
                f"closed   {where} ({kind}): always waits for a person "
                f"({', '.join(sorted(self.held_by))})"
            )
        label = "OPEN    " if self.problem else "open    "
        text = f"{label} {where} ({kind}): sent without a person by "
        text += f"{', '.join(sorted(self.allowed_by))} {self.when()}"
        if not self.customer_facing:
            text += "; its model text is screened before it leaves"
        return text


@dataclass
class CheckReport:
    pairs: list[PairReport]
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def check(policy: Policy) -> CheckReport:
    """Every (agent, action type) pair, and every action type an MCP client may propose,
    under ``policy``, and the problems."""
    pairs = sorted(MODEL_PAIRS)
    reports = [_pair(policy, source, action) for source, action in pairs]
    problems = [
        f"{r.source} {r.action_type}: a compromised model's text reaches a customer without "
        f"a person ({', '.join(sorted(r.allowed_by))} {r.when()}); make it "
        "approve, or name it in trusted_model_text with a reason"
        for r in reports
        if r.problem
    ]
    problems += [
        f"data_handling.restore_personal_data_for names {action}, which reaches a customer: "
        "placeholders in a model's text would become personal data sent outside"
        for action in policy.data_handling.restore_personal_data_for
        if action in CUSTOMER_FACING
    ]
    return CheckReport(reports, problems)


def _pair(policy: Policy, source: str, action_type: str) -> PairReport:
    report = PairReport(source, action_type, action_type in CUSTOMER_FACING)
    fixed = {
        "tier": "mcp" if source == MCP else "llm",
        "model_written": True,
        "customer_facing": action_type in CUSTOMER_FACING,
    }
    if action_type != "offer_discount":
        fixed["discount_pct"] = None  # only a discount carries one
    rules = [r for r in policy.rules if r.applies_to(action_type, source)]
    tested = sorted({name for r in rules for name in r.when} - set(fixed))
    grids = [_values(name, [r.when[name] for r in rules if name in r.when]) for name in tested]
    verdicts, held = set(), []
    report.grid = dict(zip(tested, grids, strict=True))
    for combination in itertools.product(*grids):
        facts = {**dict.fromkeys(FACTS), **fixed, **dict(zip(tested, combination, strict=True))}
        judgement = policy.judge(action_type, source, facts)
        verdicts.add(judgement.verdict)
        if judgement.verdict == "allow":
            report.allowed.append({name: facts[name] for name in tested})
            report.allowed_by.update(judgement.rules)
        else:
            held.append({r.split(" (")[0] for r in judgement.rules if "=allow" not in r})
    if held:
        report.held_by = set.intersection(*held) or set.union(*held)
    report.forbidden = verdicts == {"forbid"}
    return report


def _values(name: str, conditions: list[Condition]) -> list[object]:
    """Values of a fact that reach every outcome of these conditions, unknown included."""
    values: list[object] = [] if name in MODEL_CHOSEN_FACTS else [None]
    for c in conditions:
        for bound in (c.above, c.at_least, c.below, c.at_most):
            if bound is not None:
                values += [bound - 0.01, bound, bound + 0.01]
        values += list(c.in_ or [])
        if c.equals is not None:
            values.append(c.equals)
            if isinstance(c.equals, bool):
                values.append(not c.equals)
    if any(isinstance(v, str) for v in values) or name == "account_tier":
        values += [*ACCOUNT_TIERS] if name == "account_tier" else []
        values.append(OTHER)
    if name in RANGES:
        low, high = RANGES[name]
        values = [v for v in values if v is None or low <= v <= high] + [low, high]
    elif not any(isinstance(v, bool | str) for v in values if v is not None):
        values.append(0)
    return list(dict.fromkeys(values))


def _show(value: object) -> str:
    return "unknown" if value is None else str(value)
