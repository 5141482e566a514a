"""Every agent: its output schema, its inputs from the state store, its offline decision."""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from revorch.agents import incremental
from revorch.agents import offline as offline_inputs
from revorch.agents.config import AgentSettings
from revorch.agents.features import ModelsConfig
from revorch.agents.offline import OfflineTier
from revorch.agents.runtime import AgentSpec, Bulk
from revorch.agents.schemas import (
    DealRisk,
    LeadQualification,
    OnboardingPlan,
    RenewalRisk,
    TicketTriage,
)
from revorch.lifecycle.config import LifecycleConfig

OUTPUTS = {
    "lead_qualification": LeadQualification,
    "deal_risk": DealRisk,
    "ticket_triage": TicketTriage,
    "renewal_risk": RenewalRisk,
    "onboarding_plan": OnboardingPlan,
}

INPUTS: dict[str, Callable[[duckdb.DuckDBPyConnection], list[dict]]] = {
    "lead_qualification": offline_inputs.lead_inputs,
    "deal_risk": offline_inputs.deal_inputs,
    "ticket_triage": offline_inputs.ticket_inputs,
    "renewal_risk": offline_inputs.renewal_inputs,
    "onboarding_plan": offline_inputs.onboarding_inputs,
}


def agent_specs(tier: OfflineTier) -> dict[str, AgentSpec]:
    return {
        name: AgentSpec(
            name=name,
            output_model=output,
            offline=Bulk(tier.lead_qualification, tier.lead_qualifications)
            if name == "lead_qualification"
            else getattr(tier, name),
            offline_version=tier.model_version(name),
        )
        for name, output in OUTPUTS.items()
    }


def inputs_to_decide(
    conn: duckdb.DuckDBPyConnection,
    spec: AgentSpec,
    settings: AgentSettings,
    lifecycle: LifecycleConfig,
    *,
    full_rebuild: bool = False,
    models: ModelsConfig | None = None,
) -> tuple[list[dict], incremental.Scope]:
    """The inputs of the items this run must decide: every open item, or only those touched
    since the agent's watermark (``incremental.plan``), with the scope to record.
    ``models``: the declared features and outcomes (config/agents.yaml ``models:``)."""
    models = models or ModelsConfig()
    version = incremental.version_key(
        spec.offline_version,
        settings.prompt_version,
        settings.model,
        lifecycle.model_dump_json(),
        models.model_dump_json(),
    )
    scope = incremental.plan(
        conn,
        spec.name,
        version,
        full_rebuild=full_rebuild,
        renewal_window_days=lifecycle.accounts.renewal_window_days,
        clock=input_clock(spec.name, models),
    )
    if scope.ids == []:
        return [], scope
    return INPUTS[spec.name](conn, scope.ids, **input_options(spec.name, lifecycle, models)), scope


def input_options(agent: str, lifecycle: LifecycleConfig, models: ModelsConfig) -> dict:
    """What an agent's inputs read besides the state store: the run's snapshot of the
    lifecycle config (the renewal window) and the declared features (config/agents.yaml
    ``models:``). The proposals read the inputs with the same (revorch/governance/open_items.py):
    an input read otherwise hashes otherwise, and its decision would propose nothing."""
    options: dict = {"config": lifecycle} if agent == "renewal_risk" else {}
    if agent in ("lead_qualification", "deal_risk", "renewal_risk"):
        options["models"] = models
    return options


def input_clock(agent: str, models: ModelsConfig) -> str | None:
    """How a lead's inputs read the clock, when its declaration makes them: a stale flag or
    a day count moves with the week, a window ending at the scoring point with any move."""
    if agent != "lead_qualification":
        return None
    lead = models.lead
    if any(
        f.activities is not None and f.activities.start == "scoring_point" and f.activities.days
        for f in lead.features
    ):
        return "instant"
    dated = any(f.derived for f in lead.features) or any(
        f.property and models.feature_types("lead")[f.name] in ("date", "timestamp")
        for f in lead.features
    )
    return "week" if dated or lead.stale_after_days else None
