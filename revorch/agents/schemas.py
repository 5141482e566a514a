"""The typed output of every agent. The LLM tier must answer in exactly these shapes
(structured outputs), and the offline tier produces them too, so callers never care which
tier decided. Each ``next_action`` is an allow-list: anything else is refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Output(BaseModel):
    # Strict: a model that answers "1.0" for a number or "yes" for a boolean is refused too.
    model_config = ConfigDict(extra="forbid", strict=True)

    confidence: float = Field(ge=0, le=1, description="How sure the agent is, 0 to 1.")
    reasons: list[str] = Field(max_length=5, description="Short reasons, most important first.")


class LeadQualification(_Output):
    fit_score: float = Field(ge=0, le=1, description="How well the company fits the ICP.")
    intent_score: float = Field(ge=0, le=1, description="Probability the lead becomes an SQL.")
    next_action: Literal["fast_track_to_sales", "accelerate_follow_up", "nurture", "disqualify"]


class DealRisk(_Output):
    risk_score: float = Field(ge=0, le=1, description="Probability the deal is lost.")
    risk_level: Literal["low", "medium", "high"]
    next_action: Literal[
        "no_action", "re_engage_champion", "exec_sponsor_outreach", "discount_review"
    ]


class TicketTriage(_Output):
    intent: Literal[
        "bug", "how_to", "billing", "feature_request", "cancellation", "outage", "other"
    ]
    severity: Literal["low", "medium", "high", "critical"]
    churn_signal: bool
    sentiment: Literal["negative", "neutral", "positive"]
    next_action: Literal[
        "route_to_support", "notify_engineering", "billing_review", "escalate_to_csm"
    ]


class RenewalRisk(_Output):
    risk_score: float = Field(ge=0, le=1, description="Probability the account churns at renewal.")
    risk_level: Literal["low", "medium", "high"]
    next_action: Literal[
        "no_action", "csm_outreach", "executive_business_review", "renewal_discount_review"
    ]


class PlanStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str
    owner_role: Literal["csm", "ae", "support", "customer"]
    due_in_days: int = Field(ge=0, le=365)
    note: str


class OnboardingPlan(_Output):
    summary: str = Field(max_length=600)
    steps: list[PlanStep] = Field(min_length=1, max_length=12)
    next_action: Literal["send_plan_to_customer", "assign_csm_review"]
