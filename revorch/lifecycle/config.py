"""The lifecycle configuration (config/lifecycle.yaml), validated when it is loaded."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from revorch.config_file import CONFIG_DIR, load_yaml_model

DEFAULT_PATH = CONFIG_DIR / "lifecycle.yaml"
NEW = "new"  # the stage of a record Revorch has not seen yet


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(_Strict):
    to: str
    from_: list[str] = Field(alias="from")
    min_days_in_stage: float = 0


class StateMachine(_Strict):
    stages: list[str]
    transitions: dict[str, list[str]]
    rules: dict[str, Rule]

    @model_validator(mode="after")
    def _moves_name_known_stages(self) -> StateMachine:
        known = {NEW, *self.stages}
        for source, targets in self.transitions.items():
            for stage in [source, *targets]:
                if stage not in known:
                    raise ValueError(f"transition {source} -> {targets}: unknown stage {stage!r}")
        for name, rule in self.rules.items():
            for stage in [rule.to, *rule.from_]:
                if stage not in known:
                    raise ValueError(f"rule {name} names unknown stage {stage!r}")
        return self

    def allows(self, source: str, target: str) -> bool:
        return target in self.transitions.get(source, [])


class ContactLifecycle(StateMachine):
    crm_lifecycle_stages: dict[str, str]
    disqualifying_lead_statuses: list[str]

    @model_validator(mode="after")
    def _crm_stages_are_known(self) -> ContactLifecycle:
        known = {NEW, *self.stages}
        for crm_value, stage in self.crm_lifecycle_stages.items():
            if stage not in known:
                raise ValueError(f"crm lifecycle stage {crm_value} maps to unknown stage {stage!r}")
        return self


class Engagement(_Strict):
    window_days: float
    mql_threshold: float
    weights: dict[str, float]
    buying_signals: list[str]


class AccountLifecycle(StateMachine):
    onboarding_days: float
    activation_utilization: float = Field(ge=0, le=1)
    renewal_window_days: float


class FollowUp(_Strict):
    fresh_signal_days: float
    cadence_days: dict[str, float]


class Sla(_Strict):
    first_touch_hours: dict[str, float]
    touch_activities: list[str]
    escalate_to_role: str


class OnboardingTask(_Strict):
    task: str
    due_days: float


class Onboarding(_Strict):
    owner_role: str
    tasks: list[OnboardingTask]


class RenewalRisk(_Strict):
    usage_drop: float = Field(ge=0, le=1)
    lookback_days: float
    angry_ticket_priorities: list[str]
    angry_csat_at_most: int
    angry_tickets: int


class Expansion(_Strict):
    utilization: float


class Handoffs(_Strict):
    follow_up: FollowUp
    sla: Sla
    onboarding: Onboarding
    renewal_risk: RenewalRisk
    expansion: Expansion


class LifecycleConfig(_Strict):
    version: int
    contacts: ContactLifecycle
    engagement: Engagement
    accounts: AccountLifecycle
    handoffs: Handoffs


class LifecycleConfigError(ValueError):
    pass


def load_lifecycle_config(
    path: str | Path = DEFAULT_PATH, *, text: str | None = None
) -> LifecycleConfig:
    """Read and validate the lifecycle file; errors name the file and the offending key."""
    return load_yaml_model(
        path, LifecycleConfig, LifecycleConfigError, "lifecycle config", text=text
    )
