"""Replay a past run's decisions from the record, or ask what would change (what-if).

- ``replay_run``: every decision the run recorded, rebuilt from the record alone and validated
  against its agent's schema again, with zero model calls; offline decisions are also taken
  again by the same offline model to prove they reproduce.
- ``what_if``: the same recorded inputs through another prompt version or model, reporting
  the decisions whose action or score changed. Nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb

from revorch.agents import prompts
from revorch.agents.llm import LlmClient, LlmRequest
from revorch.agents.redact import known_names, redact
from revorch.agents.runtime import MAX_COMPLETION_TOKENS, AgentSpec


@dataclass
class ReplayReport:
    run_id: str
    decisions: int = 0
    reproduced: int = 0
    model_calls: int = 0
    mismatches: list[str] = field(default_factory=list)
    outputs: dict[tuple[str, str], dict] = field(default_factory=dict)  # (agent, entity) -> output

    def to_text(self) -> str:
        lines = [
            f"Run {self.run_id}: {self.decisions} decisions replayed from the record, "
            f"{self.reproduced} identical, {self.model_calls} model calls."
        ]
        lines += [f"  differs: {m}" for m in self.mismatches[:20]]
        return "\n".join(lines)


@dataclass
class WhatIfReport:
    run_id: str
    decisions: int = 0
    changed: list[dict] = field(default_factory=list)
    model_calls: int = 0

    def to_text(self) -> str:
        lines = [
            f"Run {self.run_id}: {self.decisions} decisions asked again, "
            f"{len(self.changed)} changed, {self.model_calls} model calls."
        ]
        lines += [
            f"  {c['agent']} {c['entity_id']}: {c['before']} -> {c['after']}"
            for c in self.changed[:50]
        ]
        return "\n".join(lines)


def recorded(conn: duckdb.DuckDBPyConnection, run_id: str) -> list[dict]:
    cursor = conn.execute(
        "SELECT agent, entity_id, tier, model, prompt_version, input, output "
        "FROM agents.decisions WHERE run_id = ? ORDER BY agent, entity_id",
        [run_id],
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def replay_run(
    conn: duckdb.DuckDBPyConnection, run_id: str, specs: dict[str, AgentSpec]
) -> ReplayReport:
    report = ReplayReport(run_id)
    for row in recorded(conn, run_id):
        spec = specs[row["agent"]]
        report.decisions += 1
        # The record is the decision: it must still satisfy the agent's schema.
        replayed = spec.output_model.model_validate_json(row["output"])
        report.outputs[(row["agent"], row["entity_id"])] = replayed.model_dump()
        same = True
        if row["tier"] == "offline" and row["model"] == spec.offline_version:
            # The offline model is deterministic: taking the decision again must agree.
            same = spec.offline(json.loads(row["input"])).model_dump() == replayed.model_dump()
        if same:
            report.reproduced += 1
        else:
            report.mismatches.append(f"{row['agent']} {row['entity_id']}")
    return report


def what_if(
    conn: duckdb.DuckDBPyConnection,
    run_id: str,
    specs: dict[str, AgentSpec],
    *,
    prompt_version: str | None,
    llm: LlmClient | None,
    summary: Callable[[dict], str] | None = None,
) -> WhatIfReport:
    """Ask again with another prompt version (through ``llm``), or offline when ``llm`` is None."""
    report = WhatIfReport(run_id)
    rows = recorded(conn, run_id)
    summary = summary or _summary
    requests, answers = [], {}
    records = [json.loads(row["input"]) for row in rows]
    names = known_names(conn, records) if llm is not None else []
    for index, (row, record) in enumerate(zip(rows, records, strict=True)):
        spec = specs[row["agent"]]
        if llm is None:
            answers[index] = spec.offline(record).model_dump()
        else:
            version = prompt_version or row["prompt_version"]
            requests.append(
                LlmRequest(
                    key=str(index),
                    messages=prompts.messages(row["agent"], version, redact(record, names[index])),
                    output_model=spec.output_model,
                    schema_name=row["agent"],
                    max_tokens=MAX_COMPLETION_TOKENS,
                )
            )
    if requests:
        for result in llm.complete_many(requests):
            report.model_calls += 1
            if result.output is not None:
                answers[int(result.key)] = result.output.model_dump()
    for index, row in enumerate(rows):
        report.decisions += 1
        before = json.loads(row["output"])
        after = answers.get(index)
        if after is not None and summary(before) != summary(after):
            report.changed.append(
                {
                    "agent": row["agent"],
                    "entity_id": row["entity_id"],
                    "before": summary(before),
                    "after": summary(after),
                }
            )
    return report


def _summary(output: dict) -> str:
    """What a person would call 'the decision': the action, and the main score rounded."""
    score = next(
        (output[k] for k in ("intent_score", "risk_score") if k in output), output.get("severity")
    )
    if isinstance(score, float):
        score = round(score, 2)
    return f"{output.get('next_action')} ({score})" if score is not None else output["next_action"]
