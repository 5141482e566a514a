"""What one run of the main job did, in a few lines for the terminal, from what its steps
recorded (their materialization metadata): the config it read, ingested, decided, proposed,
sent, held, failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

AGENTS_PREFIX = "agents/"


@dataclass
class RunOutcome:
    """A run's steps as the summary needs them: ``metadata`` by asset (``"crm/change_log"``)
    as plain values, and the steps that failed with what they said."""

    run_id: str
    metadata: Mapping[str, Mapping[str, object]]
    failed_steps: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)  # file name -> content hash


def run_summary(run: RunOutcome) -> str:
    lines = [f"This run ({run.run_id}):"]
    if run.config:
        lines.append(
            "- Config:   "
            + ", ".join(f"{name} {digest}" for name, digest in run.config.items())
            + " (read once at the start; an edit applies from the next run)"
        )
    intake = run.metadata.get("crm/change_log")
    if intake is not None:
        lines.append(
            f"- Ingested: {intake.get('batches', 0):,} batches, {intake.get('loaded', 0):,} "
            f"changes loaded, {intake.get('duplicates', 0):,} duplicates, "
            f"{intake.get('quarantined', 0):,} quarantined"
            + (' (revorch sql "SELECT * FROM quarantine")' if intake.get("quarantined") else "")
        )
    agents = {
        key.removeprefix(AGENTS_PREFIX): values
        for key, values in sorted(run.metadata.items())
        if key.startswith(AGENTS_PREFIX) and "decisions_offline" in values
    }
    if agents:
        decided = [
            f"{agent} {values['decisions_offline']:,} offline + "
            f"{values.get('decisions_llm', 0):,} LLM"
            for agent, values in agents.items()
            if values["decisions_offline"] or values.get("decisions_llm")
        ]
        tiers = sorted({str(values.get("llm_tier", "")) for values in agents.values()} - {""})
        lines.append(
            f"- Decided:  {', '.join(decided) or 'nothing new to decide'}"
            + (f"; LLM tier {', '.join(tiers)}" if tiers else "")
        )
        broken = next((tier for tier in tiers if tier.startswith("off after")), None)
        if broken:
            lines.append(
                f"- LLM:      switched {broken}; the rest of the run decided offline at once. "
                "Check the endpoint and key; the next run asks the model again for them."
            )
    proposed = run.metadata.get("governance/proposed_actions")
    verdicts = run.metadata.get("governance/policy_verdicts", {})
    if proposed is not None:
        lines.append(
            f"- Proposed: {proposed.get('proposed', 0):,} actions: "
            f"{verdicts.get('verdict/allow', 0):,} allowed, "
            f"{verdicts.get('verdict/approve', 0):,} held for approval, "
            f"{verdicts.get('verdict/forbid', 0):,} forbidden by the policy, "
            f"{verdicts.get('verdict/withhold', 0):,} withheld (holdouts)"
        )
    queue = run.metadata.get("governance/approval_queue")
    if queue is not None:
        lines.append(
            f"- Waiting:  {queue.get('approvals_pending', 0):,} actions wait for a person "
            "(revorch approvals)"
        )
    sent = run.metadata.get("governance/dispatched_actions")
    if sent is not None:
        outcomes = {
            key.removeprefix("dispatch/"): n
            for key, n in sent.items()
            if key.startswith("dispatch/")
        }
        lines.append(
            f"- Sent:     to {sent.get('target', 'the outbox')}: "
            + (", ".join(f"{n:,} {outcome}" for outcome, n in outcomes.items()) or "nothing due")
        )
    for step, message in run.failed_steps.items():
        lines.append(f"- FAILED:   step {step}: {message}")
    if run.failed_steps:
        lines.append(
            f"- To see the failed step's log: revorch ui, then Runs > {run.run_id}; "
            "fix the cause and run the command again."
        )
    return "\n".join(lines)
