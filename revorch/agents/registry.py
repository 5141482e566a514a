"""Every agent: its output schema, its inputs from the state store, its offline decision."""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from revorch.agents import offline as offline_inputs
from revorch.agents.offline import OfflineTier
from revorch.agents.runtime import AgentSpec
from revorch.agents.schemas import (
    DealRisk,
    LeadQualification,
    OnboardingPlan,
    RenewalRisk,
    TicketTriage,
)

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
