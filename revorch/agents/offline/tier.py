"""The offline tier: decides for every agent from local models and rules, no network.

Confidence is how far a score sits from the cut that would change the decision, scaled to
0..1, so a router can send the close calls (and the valuable ones) to the LLM tier. An agent
whose model is missing falls back to a transparent rule and caps its confidence, so those
items go to the LLM tier when one is available.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import duckdb

from revorch.agents.features import ModelsConfig
from revorch.agents.offline.calibration import train_calibrated
from revorch.agents.offline.deal_model import DealModel
from revorch.agents.offline.lead_model import LeadModel
from revorch.agents.offline.plans import onboarding_plan
from revorch.agents.offline.renewal_model import RenewalModel
from revorch.agents.offline.text_rules import triage_ticket
from revorch.agents.schemas import (
    DealRisk,
    LeadQualification,
    OnboardingPlan,
    RenewalRisk,
    TicketTriage,
)
from revorch.agents.scoring import ScoringConfig
from revorch.lifecycle.config import LifecycleConfig, load_lifecycle_config

RULES_VERSION = "offline-rules-1"
FALLBACK_CONFIDENCE = 0.3  # a rule standing in for a missing model is never sure
DEAL_RISK_CUTS = (0.6, 0.8)  # medium, high: most new-business deals are lost
RENEWAL_RISK_CUTS = (0.2, 0.5)
BIG_DEAL_AMOUNT = 100_000
BIG_ACCOUNT_ARR = 100_000
STALE_DEAL_DAYS = 21


# The agent each trained model decides for, by model kind.
MODEL_AGENTS = {"lead": "lead_qualification", "deal": "deal_risk", "renewal": "renewal_risk"}


def train_model(
    kind: str,
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> Any:
    """The ``kind`` model (lead, deal or renewal) trained on the history, calibrated when
    ``scoring`` is given. Raises ValueError when the history is too short for it."""
    config = config or load_lifecycle_config()
    models = models or ModelsConfig()
    if scoring is not None:
        return train_calibrated(kind, conn, config=config, models=models, scoring=scoring)
    if kind == "lead":
        return LeadModel.train(conn, models=models)
    if kind == "deal":
        return DealModel.train(conn, models=models)
    return RenewalModel.train(conn, config=config, models=models)


class OfflineTier:
    """Every agent's decision from local models and rules. Models are optional; build them
    all from the history with :meth:`train`."""

    def __init__(
        self,
        lead_model: LeadModel | None = None,
        deal_model: DealModel | None = None,
        renewal_model: RenewalModel | None = None,
        *,
        config: LifecycleConfig | None = None,
    ) -> None:
        self.lead_model = lead_model
        self.deal_model = deal_model
        self.renewal_model = renewal_model
        self.config = config or load_lifecycle_config()
        self.untrained: dict[str, str] = {}  # agent -> why it has no model

    @classmethod
    def train(
        cls,
        conn: duckdb.DuckDBPyConnection,
        *,
        config: LifecycleConfig | None = None,
        models: ModelsConfig | None = None,
        scoring: ScoringConfig | None = None,
    ) -> OfflineTier:
        """Train every model the history supports, with the features and outcomes ``models``
        declares (default: the shipped ones); the others fall back to rules (the reason is
        in ``untrained``). With ``scoring``, each model is calibrated on the newest part of
        its history and the lead cuts are the configured ones (``train_calibrated``)."""
        config = config or load_lifecycle_config()
        tier = cls(config=config)
        for kind in MODEL_AGENTS:
            try:
                tier.set_model(
                    kind, train_model(kind, conn, config=config, models=models, scoring=scoring)
                )
            except ValueError as error:  # too little history: the rule decides instead
                tier.untrained[MODEL_AGENTS[kind]] = str(error)
        return tier

    def set_model(self, kind: str, model: Any) -> None:
        """Decide ``kind``'s agent with ``model`` (None: its rule)."""
        setattr(self, f"{kind}_model", model)

    def model_version(self, agent: str) -> str:
        """What decides for ``agent``: a model version, or the rules' version."""
        model = {
            "lead_qualification": self.lead_model,
            "deal_risk": self.deal_model,
            "renewal_risk": self.renewal_model,
        }.get(agent)
        return model.version if model is not None else RULES_VERSION

    def lead_qualification(self, item: dict[str, Any]) -> LeadQualification:
        """Fit, probability of reaching SQL, and what to do with a ``lead_inputs`` row.
        A stale lead (open longer than ``stale_after_days``) is never fast-tracked."""
        return self._lead(item, None)

    def lead_qualifications(self, items: list[dict[str, Any]]) -> list[LeadQualification]:
        """:meth:`lead_qualification` of every item, the same decisions, with the model's
        scores computed for all of them at once (a run scores every open lead)."""
        model = self.lead_model
        if model is None or not items:
            return [self._lead(item, None) for item in items]
        encoded = model.intent.encode_rows(items)
        scores = zip(
            model.predict_each(items, encoded),
            model.fit_scores_each(items),
            model.intent.effects(encoded),
            strict=True,
        )
        return [self._lead(item, score) for item, score in zip(items, scores, strict=True)]

    def _lead(self, item: dict[str, Any], scores: tuple | None) -> LeadQualification:
        """``scores``: (probability, fit, features' effects) computed in bulk, else None."""
        model = self.lead_model
        if model is not None and scores is None:
            scores = (model.predict([item])[0], model.fit_scores([item])[0], None)
        if item.get("stale"):
            return LeadQualification(
                fit_score=round(scores[1], 4) if model else 0.5,
                intent_score=round(scores[0], 4) if model else 0.0,
                next_action="nurture",
                # A rule, not a close call: no reason to ask the LLM tier.
                confidence=1.0,
                reasons=[
                    f"stale: open since {str(item.get('created_at'))[:10]}, older than the "
                    "configured age; re-qualify before working it"
                ],
            )
        if item.get("stage") == "sql":
            fit = scores[1] if model else 0.5
            return LeadQualification(
                fit_score=round(fit, 4),
                intent_score=1.0,
                next_action="fast_track_to_sales",
                confidence=1.0,
                reasons=["already sales-qualified"],
            )
        if model is None:
            return self._lead_by_engagement(item)
        p, fit, effects = scores
        t = model.threshold
        if p >= t:
            # A calibrated model has its own fast-track cut (config); otherwise the work-now one.
            fast = getattr(model, "fast_track_cut", t)
            action = "fast_track_to_sales" if p >= fast and fit >= 0.5 else "accelerate_follow_up"
        elif model.percentile(p) < 0.2 and fit < 0.25:
            action = "disqualify"
        else:
            action = "nurture"
        reasons = [
            f"{p:.0%} chance of SQL in {model.metadata['horizon_days']} days "
            f"(work-now cut {t:.0%})",
            *model.reasons(item, limit=3, effects=effects),
        ]
        return LeadQualification(
            fit_score=round(fit, 4),
            intent_score=round(p, 4),
            next_action=action,
            confidence=round(_distance_from_cut(p, t), 4),
            reasons=reasons[:5],
        )

    def _lead_by_engagement(self, item: dict[str, Any]) -> LeadQualification:
        engagement = self.config.engagement
        counts = {
            "email_opened": item.get("emails_opened", 0),
            "email_replied": item.get("emails_replied", 0),
            "web_visit": item.get("web_visits", 0) - item.get("pricing_visits", 0),
            "pricing_visit": item.get("pricing_visits", 0),
            "form_fill": item.get("form_fills", 0),
            "meeting": item.get("meetings", 0),
            "call": item.get("calls", 0),
        }
        score = sum(engagement.weights.get(k, 0) * (v or 0) for k, v in counts.items())
        p = score / (score + engagement.mql_threshold)
        return LeadQualification(
            fit_score=0.5,
            intent_score=round(p, 4),
            next_action="accelerate_follow_up" if p >= 0.5 else "nurture",
            confidence=round(FALLBACK_CONFIDENCE * _distance_from_cut(p, 0.5), 4),
            reasons=[f"no lead model: engagement score {score:g} against the MQL threshold"],
        )

    def deal_risk(self, item: dict[str, Any]) -> DealRisk:
        """Probability a ``deal_inputs`` row is lost: the model's odds at creation, raised
        when the deal is past its close date or has gone quiet."""
        reasons = []
        if self.deal_model is not None:
            p = self.deal_model.predict([item])[0]
            reasons.append(f"{p:.0%} loss odds for deals like this at creation")
            cap = 1.0
        else:
            p, cap = 0.7, FALLBACK_CONFIDENCE
            reasons.append("no deal model: judged on staleness only")
        odds = p / (1 - p) if p < 1 else math.inf
        overdue = _days_between(item.get("close_date"), item.get("as_of"))
        quiet = _days_between(
            item.get("last_touch_at") or item.get("created_at"), item.get("as_of")
        )
        if overdue is not None and overdue > 0:
            odds *= 2.0
            reasons.append(f"{overdue} days past its close date")
        stale = quiet is not None and quiet >= STALE_DEAL_DAYS
        if stale:
            odds *= 1.5
            reasons.append(f"no touch for {quiet} days")
        risk = odds / (1 + odds) if math.isfinite(odds) else 1.0
        level = _level(risk, DEAL_RISK_CUTS)
        amount = item.get("amount") or 0
        if level == "high":
            action = "exec_sponsor_outreach" if amount >= BIG_DEAL_AMOUNT else "re_engage_champion"
            if not stale and (overdue is None or overdue <= 0):
                action = "discount_review" if amount < BIG_DEAL_AMOUNT else action
        elif level == "medium" and stale:
            action = "re_engage_champion"
        else:
            action = "no_action"
        return DealRisk(
            risk_score=round(risk, 4),
            risk_level=level,
            next_action=action,
            confidence=round(cap * _distance_from_cuts(risk, DEAL_RISK_CUTS), 4),
            reasons=reasons[:5],
        )

    def ticket_triage(self, item: dict[str, Any]) -> TicketTriage:
        """Intent, severity, churn signal and sentiment from a ``ticket_inputs`` row's text."""
        return triage_ticket(item)

    def renewal_risk(self, item: dict[str, Any]) -> RenewalRisk:
        """Probability a ``renewal_inputs`` row churns at its end date, and what to do."""
        if self.renewal_model is not None:
            p = self.renewal_model.predict([item])[0]
            cap = 1.0
            reasons = [f"{p:.0%} churn odds for accounts like this at renewal"]
        else:
            p = 1 - (item.get("health_score") or 50) / 100
            cap = FALLBACK_CONFIDENCE
            reasons = [f"no renewal model: health score {item.get('health_score')}"]
        utilization, change = item.get("utilization"), item.get("usage_change")
        angry = item.get("angry_tickets") or 0
        if change is not None and change <= -self.config.handoffs.renewal_risk.usage_drop:
            reasons.append(f"seat use fell {-change:.0%} over the look-back")
        if angry:
            reasons.append(f"{angry} angry tickets recently")
        if utilization is not None and utilization < 0.5:
            reasons.append(f"only {utilization:.0%} of seats in use")
        level = _level(p, RENEWAL_RISK_CUTS)
        arr = item.get("arr") or 0
        if level == "high":
            if arr >= BIG_ACCOUNT_ARR:
                action = "executive_business_review"
            elif (utilization or 0) >= 0.7 and not angry:
                action = "renewal_discount_review"  # they use it but may balk at the price
            else:
                action = "csm_outreach"
        elif level == "medium":
            action = "csm_outreach"
        else:
            action = "no_action"
        return RenewalRisk(
            risk_score=round(p, 4),
            risk_level=level,
            next_action=action,
            confidence=round(cap * _distance_from_cuts(p, RENEWAL_RISK_CUTS), 4),
            reasons=reasons[:5],
        )

    def onboarding_plan(self, item: dict[str, Any]) -> OnboardingPlan:
        """A plan for an ``onboarding_inputs`` row: the configured tasks and what its facts
        call for."""
        return onboarding_plan(item, self.config)


def _distance_from_cut(p: float, cut: float) -> float:
    """0 at the cut, 1 at certainty on either side of it."""
    span = (1 - cut) if p >= cut else cut
    return min(1.0, abs(p - cut) / span) if span > 0 else 1.0


def _distance_from_cuts(p: float, cuts: tuple[float, float]) -> float:
    """How far ``p`` is from the nearest level boundary, relative to the room it has."""
    low, high = cuts
    if p < low:
        return _distance_from_cut(p, low)
    if p >= high:
        return _distance_from_cut(p, high)
    return min(p - low, high - p) / ((high - low) / 2)


def _level(p: float, cuts: tuple[float, float]) -> str:
    return "high" if p >= cuts[1] else "medium" if p >= cuts[0] else "low"


def _days_between(earlier: str | None, later: str | None) -> int | None:
    if not earlier or not later:
        return None
    return (date.fromisoformat(later[:10]) - date.fromisoformat(earlier[:10])).days
