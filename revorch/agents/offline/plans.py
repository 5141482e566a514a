"""Onboarding plans built from the configured onboarding tasks and the account's facts."""

from __future__ import annotations

from typing import Any

from revorch.agents.schemas import OnboardingPlan, PlanStep
from revorch.lifecycle.config import LifecycleConfig

# Who does a configured task, by a word in its name; the CSM runs anything else.
TASK_OWNERS = {"setup": "customer", "install": "customer", "invoice": "ae", "contract": "ae"}
LARGE_ROLLOUT_SEATS = 200
LOW_UTILIZATION = 0.3


def onboarding_plan(item: dict[str, Any], config: LifecycleConfig) -> OnboardingPlan:
    """The configured tasks, re-dated from today, plus steps the account's facts call for."""
    days_in = int(item.get("days_since_start") or 0)
    steps = [
        PlanStep(
            task=task.task,
            owner_role=_owner_of(task.task),
            due_in_days=max(0, round(task.due_days) - days_in),
            note=(
                f"overdue by {days_in - round(task.due_days)} days"
                if days_in > task.due_days
                else f"day {round(task.due_days)} of onboarding"
            ),
        )
        for task in config.handoffs.onboarding.tasks
    ]
    reasons, concerns = [], 0
    seats, utilization = item.get("seats"), item.get("utilization")
    if seats and seats >= LARGE_ROLLOUT_SEATS:
        steps.append(
            PlanStep(
                task="phased_rollout_by_team",
                owner_role="csm",
                due_in_days=14,
                note=f"{seats} seats: roll out team by team with a named admin each",
            )
        )
        reasons.append(f"large rollout ({seats} seats)")
    if utilization is not None and utilization < LOW_UTILIZATION:
        steps.append(
            PlanStep(
                task="seat_activation_push",
                owner_role="csm",
                due_in_days=7,
                note=f"only {utilization:.0%} of seats active so far",
            )
        )
        reasons.append(f"seat activation low ({utilization:.0%})")
        concerns += 1
    if item.get("tier") in ("enterprise", "strategic"):
        steps.append(
            PlanStep(
                task="executive_sponsor_alignment",
                owner_role="ae",
                due_in_days=21,
                note=f"{item['tier']} account: agree success criteria with the sponsor",
            )
        )
    if item.get("open_tickets"):
        steps.append(
            PlanStep(
                task="resolve_open_tickets",
                owner_role="support",
                due_in_days=3,
                note=f"{item['open_tickets']} open tickets before the next review",
            )
        )
        reasons.append(f"{item['open_tickets']} open tickets")
        concerns += 1
    if item.get("status") == "overdue":
        reasons.insert(0, "onboarding is past its due date")
        concerns += 1
    if not item.get("owner_id"):
        reasons.insert(0, "no CSM assigned")
        concerns += 1
    missing = sum(item.get(k) is None for k in ("seats", "tier", "owner_id"))

    name = item.get("company_name") or item.get("company_id") or "the account"
    summary = (
        f"Onboard {name} ({item.get('tier') or 'unknown tier'}, {item.get('plan') or 'no plan'}"
        f"{f', {seats} seats' if seats else ''}): {len(steps)} steps, day {days_in}."
    )
    return OnboardingPlan(
        summary=summary[:600],
        steps=steps[:12],
        next_action="assign_csm_review" if concerns else "send_plan_to_customer",
        # Sure when the facts are complete and nothing needs a person's judgement.
        confidence=round(max(0.2, 0.95 - 0.2 * concerns - 0.15 * missing), 4),
        reasons=(reasons or ["on track: configured tasks re-dated from today"])[:5],
    )


def _owner_of(task: str) -> str:
    for word, role in TASK_OWNERS.items():
        if word in task:
            return role
    return "csm"
