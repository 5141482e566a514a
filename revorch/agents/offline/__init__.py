"""The offline tier: every agent decided locally, with no key and no network.

``*_inputs`` read the items each agent decides on from DuckDB; ``OfflineTier`` decides them
with the trained models (``LeadModel``, ``DealModel``, ``RenewalModel``), text rules for
tickets and the configured onboarding tasks for plans.
"""

from revorch.agents.offline.deal_model import DealModel
from revorch.agents.offline.inputs import (
    deal_inputs,
    lead_inputs,
    onboarding_inputs,
    renewal_inputs,
    stage_lead_inputs,
    ticket_inputs,
)
from revorch.agents.offline.lead_model import LeadModel
from revorch.agents.offline.renewal_model import RenewalModel
from revorch.agents.offline.tier import RULES_VERSION, OfflineTier

__all__ = [
    "RULES_VERSION",
    "DealModel",
    "LeadModel",
    "OfflineTier",
    "RenewalModel",
    "deal_inputs",
    "lead_inputs",
    "onboarding_inputs",
    "renewal_inputs",
    "stage_lead_inputs",
    "ticket_inputs",
]
