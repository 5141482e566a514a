"""Every agent: its output schema, its inputs from the state store, its offline decision."""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from revorch.agents import incremental
from revorch.agents import offline as offline_inputs
from revorch.agents.config import AgentSettings
from revorch.agents.offline import OfflineTier
from revorch.agents.runtime import AgentSpec
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
            offline=getattr(tier, name),
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
) -> tuple[list[dict], incremental.Scope]:
    """The inputs of the items this run must decide: every open item, or only those touched
    since the agent's watermark (``incremental.plan``), with the scope to record."""
    version = incremental.version_key(
        spec.offline_version, settings.prompt_version, settings.model, lifecycle.model_dump_json()
    )
    scope = incremental.plan(
        conn,
        spec.name,
        version,
        full_rebuild=full_rebuild,
        renewal_window_days=lifecycle.accounts.renewal_window_days,
    )
    if scope.ids == []:
        return [], scope
    # The renewal window, like every rule, comes from the run's snapshot of the config.
    by_config = {"config": lifecycle} if spec.name == "renewal_risk" else {}
    return INPUTS[spec.name](conn, scope.ids, **by_config), scope
