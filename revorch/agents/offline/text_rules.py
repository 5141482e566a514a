"""Ticket triage by rules over the text: weighted patterns for intent, severity and churn
signal, a small sentiment lexicon, and a confidence that says how clear the text was."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from revorch.agents.schemas import TicketTriage

# (pattern, weight) per intent; the intent with the largest total wins.
INTENT_PATTERNS: dict[str, list[tuple[str, float]]] = {
    "cancellation": [
        (r"\bcancel(l?ing|l?ation|led)?\b", 3.0),
        (r"\bterminat(e|ing|ion)\b", 3.0),
        (r"\b(not|won'?t|will not) renew\b", 3.0),
        (r"\bclose (our|the) account\b", 2.5),
        (r"\bswitch(ing)? to\b", 2.0),
    ],
    "outage": [
        (r"\b(outage|down for|is down|went down|not loading at all)\b", 3.0),
        (r"\blocked out\b", 2.5),
        (r"\b(time|timing) ?out\b", 2.0),
        (r"\b(broken|stopped) for (hours|days)\b", 2.0),
        (r"\b(whole|entire) (team|company|sales floor)\b", 1.5),
        (r"\bhas been broken\b", 1.5),
    ],
    "billing": [
        (r"\b(invoice|invoiced|billing|billed|charged?|refund|payment|receipt|vat)\b", 2.0),
        (r"\bseat count\b", 1.0),
        (r"\b(price|pricing|overcharg\w*)\b", 1.0),
    ],
    "bug": [
        (r"\b(bug|error|wrong|incorrect|off by|crash\w*|broken|fails?|failing)\b", 1.5),
        (r"\b(stopped|not) (working|updating|syncing|updated)\b", 1.5),
        (r"\bsync\b", 1.0),
        (r"\bslow\b", 1.0),
        (r"\bsso error\b", 1.5),
    ],
    "how_to": [
        (r"\bhow (do|can|to|should)\b", 2.5),
        (r"\b(guide|documentation|docs|tutorial|set ?up|configure)\b", 1.0),
        (r"\bis there a way\b", 2.0),
    ],
    "feature_request": [
        (r"\bfeature request\b", 3.0),
        (r"\b(would (help|be great)|please add|roadmap|it would be nice)\b", 2.0),
        (r"\b(support for|ability to)\b", 1.0),
    ],
}

CHURN_PATTERNS = [
    r"\bcancel",
    r"\bswitch(ing)? to\b",
    r"\brefund\b",
    r"\b(evaluating|looking at|considering) (alternatives|other vendors|competitors)\b",
    r"\bquestioning whether to keep\b",
    r"\bwhy we pay\b",
    r"\b(not|won'?t|will not) renew\b",
    r"\bterminat",
    r"\bmoving to\b",
]

NEGATIVE_WORDS = [
    r"\bunacceptable\b",
    r"\b(third|again|keeps happening|still no|twice)\b",
    r"\b(useless|frustrat\w*|angry|disappoint\w*|terrible|awful)\b",
    r"\b(nobody|no answer|no one)\b",
    r"\b(blocking|cannot get value|stale)\b",
    r"\bcompletely wrong\b",
]
POSITIVE_WORDS = [r"\b(thanks|thank you|great|love|appreciate|awesome|helpful)\b"]

CRITICAL_PATTERNS = [
    r"\b(outage|is down|locked out|time ?out\w*|whole team|entire team|sales floor)\b",
    r"\b(data loss|lost data|security|breach)\b",
    r"\bboard meeting\b",
]
PRIORITY_SEVERITY = {"low": "low", "medium": "medium", "high": "high", "urgent": "critical"}
SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class TextEvidence:
    """What the rules found in one ticket."""

    intent_scores: dict[str, float]
    churn_hits: list[str]
    negative_hits: int
    positive_hits: int
    critical_hits: int


def read_ticket(subject: str | None, body: str | None) -> TextEvidence:
    """Match every rule against the ticket's subject and body."""
    text = f"{subject or ''}\n{body or ''}".lower()
    scores = {
        intent: sum(w * len(re.findall(p, text)) for p, w in patterns)
        for intent, patterns in INTENT_PATTERNS.items()
    }
    churn = [m.group(0) for p in CHURN_PATTERNS for m in [re.search(p, text)] if m]
    return TextEvidence(
        intent_scores=scores,
        churn_hits=churn,
        negative_hits=sum(len(re.findall(p, text)) for p in NEGATIVE_WORDS),
        positive_hits=sum(len(re.findall(p, text)) for p in POSITIVE_WORDS),
        critical_hits=sum(len(re.findall(p, text)) for p in CRITICAL_PATTERNS),
    )


def triage_ticket(item: dict[str, Any]) -> TicketTriage:
    """Intent, severity, churn signal and sentiment of a ``ticket_inputs`` row."""
    evidence = read_ticket(item.get("subject"), item.get("body"))
    ranked = sorted(evidence.intent_scores.items(), key=lambda kv: (-kv[1], kv[0]))
    (intent, top), (_, second) = ranked[0], ranked[1]
    if top == 0:
        intent = "other"
    churn = bool(evidence.churn_hits) or intent == "cancellation"
    if evidence.negative_hits > evidence.positive_hits:
        sentiment = "negative"
    elif evidence.positive_hits > 0:
        sentiment = "positive"
    else:
        sentiment = "neutral"

    severity = PRIORITY_SEVERITY.get(str(item.get("priority")), "medium")
    level = SEVERITIES.index(severity)
    if intent == "outage" or evidence.critical_hits:
        level = max(level, 3 if evidence.critical_hits >= 1 and intent == "outage" else 2)
    if churn or evidence.negative_hits >= 2:
        level = max(level, 2)
    severity = SEVERITIES[level]

    if churn:
        next_action = "escalate_to_csm"
    elif intent == "outage" or (intent == "bug" and level >= 2):
        next_action = "notify_engineering"
    elif intent == "billing":
        next_action = "billing_review"
    else:
        next_action = "route_to_support"

    # Clear text: one intent well ahead of the next, backed by several matches.
    margin = (top - second) / top if top else 0.0
    confidence = 0.25 + 0.75 * margin * min(1.0, top / 4.0) if top else 0.2
    reasons = [f"text reads as {intent.replace('_', ' ')} (score {top:g} vs {second:g})"]
    if evidence.churn_hits:
        reasons.append("churn words: " + ", ".join(sorted(set(evidence.churn_hits)))[:120])
    if evidence.critical_hits:
        reasons.append("wide impact or urgency in the text")
    reasons.append(f"priority {item.get('priority') or 'unset'}, sentiment {sentiment}")
    return TicketTriage(
        intent=intent,
        severity=severity,
        churn_signal=churn,
        sentiment=sentiment,
        next_action=next_action,
        confidence=round(min(1.0, confidence), 4),
        reasons=reasons[:5],
    )
