"""Run one agent over its inputs: memo, offline tier, routing, budget, LLM tier, record.

1. Every input is hashed; a decision already taken for the same (agent, prompt version, model,
   input) is re-used, so an unchanged input is never sent again.
2. The offline tier decides every new input (it is cheap and needs no network).
3. The agent's ``llm_when`` rule picks the uncertain or high-value ones for the LLM tier, as
   many as the run and day budgets allow at the worst-case price (an upper bound for any
   text: a token per UTF-8 byte of the redacted request, and the full completion); the rest
   keep the offline decision, marked with why (``budget_exhausted``). The worst case of the
   calls planned is reserved in ``agents.budget_reservations`` before any call, so runs that
   overlap cannot overspend together.
4. LLM calls run concurrently within the provider's limits. A call that fails (after retries)
   or answers outside the schema keeps the offline decision, marked with the reason.
5. Every new decision is written to ``agents.decisions`` and the money to ``agents.cost_ledger``,
   the reservation is settled and the agent's watermark (``seen``, revorch/agents/incremental.py)
   moves on, in one transaction.

Read, decide, write: the state store is opened only for steps 1, 3 and 5, each short, so no
connection (and no writer lock) is held while the model answers.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import duckdb
import numpy as np
import polars as pl
from pydantic import BaseModel

from revorch.agents import incremental, prompts
from revorch.agents.config import AgentsConfig, AgentSettings
from revorch.agents.llm import (
    LlmClient,
    LlmRequest,
    LlmResult,
    strict_json_schema,
    worst_case_prompt_tokens,
)
from revorch.agents.memo import canonical_json, decision_id, text_hash
from revorch.agents.redact import known_names, redact
from revorch.mcp.client import look_up, with_lookups
from revorch.state.backend import claim, retry_conflicts
from revorch.state.migrate import rollback

MAX_COMPLETION_TOKENS = 400
ROWS_PER_FRAME = 10_000

# The columns of agents.decisions a run writes (decided_at is the insert's), as _row makes them.
DECISION_COLUMNS = {
    **dict.fromkeys(
        ("decision_id", "agent", "prompt_version", "model", "input_hash", "entity_id", "tier"),
        pl.String,
    ),
    **dict.fromkeys(("fallback_reason", "input", "prompt", "output", "raw_output"), pl.String),
    **dict.fromkeys(("prompt_tokens", "cached_tokens", "completion_tokens"), pl.Int64),
    "cost_usd": pl.Float64,
    "latency_ms": pl.Float64,
    "attempts": pl.Int64,
    "run_id": pl.String,
}


@dataclass(frozen=True)
class AgentSpec:
    """What an agent is: its name, output schema and offline decision."""

    name: str
    output_model: type[BaseModel]
    offline: Callable[[dict], BaseModel]  # the offline tier's decision for one input
    offline_version: str  # names the offline model in the memo key


@dataclass(frozen=True)
class Bulk:
    """An offline decision that can also decide many inputs at once (``many``: the same
    decisions, the models scored in bulk); ``run_agent`` uses ``many`` when it is there."""

    one: Callable[[dict], BaseModel]
    many: Callable[[list[dict]], list[BaseModel]]

    def __call__(self, item: dict) -> BaseModel:
        return self.one(item)


@dataclass
class RunReport:
    agent: str
    inputs: int = 0
    memo_hits: int = 0
    decisions_by_tier: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)
    calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def as_metadata(self) -> dict[str, float | int]:
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "inputs": self.inputs,
            "memo_hits": self.memo_hits,
            "decisions_offline": self.decisions_by_tier["offline"],
            "decisions_llm": self.decisions_by_tier["llm"],
            **{f"fallback/{reason}": n for reason, n in self.fallbacks.items()},
            "llm_calls": self.calls,
            "llm_failed_calls": self.failed_calls,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
        }


Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]
"""Opens a connection to the state store for one short phase, e.g. ``StateStore.get_connection``."""


def keep_open(conn: duckdb.DuckDBPyConnection) -> Connect:
    """Every phase on this one open connection (tests, benchmarks, scripts: nothing else
    writes meanwhile, so there is no writer to release)."""
    return lambda: nullcontext(conn)


def run_agent(
    connect: Connect,
    spec: AgentSpec,
    config: AgentsConfig,
    items: list[dict],
    *,
    llm: LlmClient | None,
    run_id: str | None,
    settings: AgentSettings | None = None,
    seen: incremental.Watermark | None = None,
    read: incremental.ItemsRead | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Decide every item (see the module docstring); return what it took.

    Read, decide, write: ``connect`` is called for each short phase that needs the state store
    (the memo, the budget reservation, the record), and no connection is open while the
    offline tier computes or the model answers, so other writers go on meanwhile.
    ``seen`` is the watermark the items were planned from (``incremental.plan``), recorded
    with the decisions; with ``read`` (what was read, and with which inputs key), so are the
    items' input hashes (``incremental.record_items``; their watermark only with ``seen``).
    ``report``: the report of the run's earlier slices (``registry.decide_in_slices``), added
    to; the run's budget counts what they spent.
    """
    settings = settings or config.agents[spec.name]
    report = report or RunReport(spec.name)
    report.inputs += len(items)
    spent = report.cost_usd  # by the run's earlier slices
    day = datetime.now(UTC).date()
    # Each input's canonical text once: hashed for the memo, stored with a new decision.
    texts = [canonical_json(item) for item in items]
    hashes = [text_hash(text) for text in texts]
    with connect() as conn:
        known = _memo(conn, spec, settings, sorted(set(hashes)), [str(i["id"]) for i in items])
    report.memo_hits += sum(1 for h in hashes if h in known)

    todo = [
        (item, digest) for item, digest in zip(items, hashes, strict=True) if digest not in known
    ]
    todo = list({digest: (item, digest) for item, digest in todo}.values())  # same input once
    text_of = dict(zip(hashes, texts, strict=True))
    offline = (
        spec.offline.many([item for item, _ in todo])
        if isinstance(spec.offline, Bulk)
        else [spec.offline(item) for item, _ in todo]
    )
    wanted = [
        i
        for i, ((item, _), decision) in enumerate(zip(todo, offline, strict=True))
        if llm is not None and settings.llm_when.wants_llm(decision.confidence, item)
    ]
    asked: list[int] = []
    reservation, redacted = None, {}
    if wanted:
        with connect() as conn:
            names = known_names(conn, [todo[i][0] for i in wanted])
            room = _room(conn, spec, settings, day, spent)
        # The agent's MCP lookups, with no connection open; their text is redacted with the
        # record's and travels inside it (revorch/mcp/client.py).
        lookups = (
            look_up(config.mcp_servers, settings.mcp_tools, [todo[i][0] for i in wanted])
            if settings.mcp_tools
            else [None] * len(wanted)
        )
        # Redacted before the reservation, as the worst case is counted on what is sent, and
        # only as many as the room left now could pay for (it can only shrink meanwhile).
        sent, worst = {}, []
        for i, known, found in zip(wanted, names, lookups, strict=True):
            sent[i] = redact(with_lookups(todo[i][0], found), known)
            worst.append(worst_case_cost(spec, settings, config, sent[i]))
            if math.fsum(worst) > room:
                break
        with connect() as conn:
            reservation = _reserve(conn, spec, settings, worst, run_id, day, spent)
        asked = wanted[: reservation.calls]
        redacted = {i: sent[i] for i in asked}
    fallback = {i: "budget_exhausted" for i in wanted[len(asked) :]}

    requests = [
        LlmRequest(
            key=str(i),
            messages=prompts.messages(spec.name, settings.prompt_version, sent),
            output_model=spec.output_model,
            schema_name=spec.name,
            max_tokens=MAX_COMPLETION_TOKENS,
        )
        for i, sent in redacted.items()
    ]
    results = {int(r.key): r for r in llm.complete_many(requests)} if requests else {}
    price = config.prices[settings.model]
    # The decisions are kept as frames of ROWS_PER_FRAME rows, not one dict each, so a run
    # that decides every open lead of a large CRM holds each decision's text only once.
    frames: list[pl.DataFrame] = []
    rows: list[dict] = []
    for i, ((item, digest), decision) in enumerate(zip(todo, offline, strict=True)):
        result = results.get(i)
        if result is not None and result.error_kind == "circuit_open":
            fallback[i], result = "circuit_open", None  # never sent: the breaker was open
        if result is not None:
            report.calls += 1
            report.prompt_tokens += result.prompt_tokens
            report.cached_tokens += result.cached_tokens
            report.completion_tokens += result.completion_tokens
            report.latencies_ms.append(result.latency_seconds * 1000)
            cost = price.cost(result.prompt_tokens, result.cached_tokens, result.completion_tokens)
            report.cost_usd += cost
            if result.output is None:
                report.failed_calls += 1
                fallback[i] = result.error_kind or "failed"
        rows.append(
            _row(
                spec,
                settings,
                item,
                digest,
                decision,
                result,
                fallback.get(i),
                price,
                run_id,
                redacted.get(i),
                text_of[digest],
            )
        )
        if len(rows) == ROWS_PER_FRAME:
            frames.append(pl.DataFrame(rows, schema=DECISION_COLUMNS))
            rows = []
    if rows:
        frames.append(pl.DataFrame(rows, schema=DECISION_COLUMNS))
    if frames or seen is not None or read is not None:
        decided = pl.concat(frames) if frames else pl.DataFrame(schema=DECISION_COLUMNS)
        read_items = (read, items, hashes) if read is not None else None
        with connect() as conn:
            _record(
                conn, spec, settings, decided, report, run_id, day, reservation, seen, read_items
            )
    return report


def _memo(
    conn, spec: AgentSpec, settings: AgentSettings, hashes: list[str], entity_ids: list[str]
) -> set[str]:
    """Inputs already decided by this prompt version and model (LLM or offline). A decision
    that fell back for want of budget or a failed call is not re-used: it is asked again.

    An input holds its entity's id, so its decisions are those of ``entity_ids``: the range
    of those ids, redundant for the answer, lets DuckDB's zone maps skip the decisions of
    other ids (a first run records its slices in id order), so a slice's lookup does not
    grow with the decisions every earlier slice recorded."""
    if not hashes:
        return set()
    rows = conn.execute(
        """
        SELECT DISTINCT input_hash FROM agents.decisions
        WHERE agent = ? AND prompt_version = ? AND model IN (?, ?) AND fallback_reason IS NULL
          AND entity_id BETWEEN ? AND ? AND input_hash IN (SELECT unnest(?))
        """,
        [
            spec.name,
            settings.prompt_version,
            settings.model,
            spec.offline_version,
            min(entity_ids),
            max(entity_ids),
            hashes,
        ],
    ).fetchall()
    return {row[0] for row in rows}


@dataclass(frozen=True)
class Reservation:
    """Money set aside in ``agents.budget_reservations`` for the calls a run may make."""

    reservation_id: str
    calls: int
    reserved_usd: float


def worst_case_cost(
    spec: AgentSpec, settings: AgentSettings, config: AgentsConfig, item: dict
) -> float:
    """The most one call sending ``item`` (as redacted) can cost, whatever its text: every
    prompt token fresh at the dearer input price, the full completion, and a prompt of
    :func:`~revorch.agents.llm.worst_case_prompt_tokens` tokens (a byte-level tokenizer
    never makes more tokens than the text has UTF-8 bytes)."""
    messages = prompts.messages(spec.name, settings.prompt_version, item)
    tokens = worst_case_prompt_tokens(messages, strict_json_schema(spec.output_model))
    price = config.prices[settings.model]
    dearest = price.model_copy(update={"input": max(price.input, price.cached_input)})
    return dearest.cost(tokens, 0, MAX_COMPLETION_TOKENS)


def _room(conn, spec: AgentSpec, settings: AgentSettings, day: date, spent: float = 0.0) -> float:
    """What the run may still spend: the run's budget less what it ``spent`` already (in earlier
    slices), or what is left of the day's after what was spent today and what other runs have
    reserved and not settled."""
    spent_today = conn.execute(
        """
        SELECT (SELECT coalesce(sum(cost_usd), 0) FROM agents.cost_ledger
                WHERE agent = $agent AND day = $day)
             + (SELECT coalesce(sum(reserved_usd), 0) FROM agents.budget_reservations
                WHERE agent = $agent AND day = $day)
        """,
        {"agent": spec.name, "day": day},
    ).fetchone()[0]
    return min(settings.budget.per_run_usd - spent, settings.budget.per_day_usd - spent_today)


def _reserve(
    conn, spec, settings, worst: list[float], run_id, day: date, spent: float = 0.0
) -> Reservation:
    """Reserve the worst-case cost of as many of these calls (in order) as the room left
    allows. One transaction, so concurrent runs reserve one after the other: on the file the
    writer lock orders them; on DuckLake the claim makes the later commit conflict, and it
    runs again on the newer snapshot, with the other's reservation counted."""
    return retry_conflicts(lambda: _reserve_once(conn, spec, settings, worst, run_id, day, spent))


def _reserve_once(
    conn, spec, settings, worst: list[float], run_id, day: date, spent: float
) -> Reservation:
    reservation = Reservation(str(uuid.uuid4()), 0, 0.0)
    conn.execute("BEGIN TRANSACTION")
    try:
        claim(conn, "agents")
        room = _room(conn, spec, settings, day, spent)
        for cost in worst:
            if reservation.reserved_usd + cost > room:
                break
            reservation = Reservation(
                reservation.reservation_id, reservation.calls + 1, reservation.reserved_usd + cost
            )
        if reservation.calls:
            conn.execute(
                "INSERT INTO agents.budget_reservations VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [
                    reservation.reservation_id,
                    run_id,
                    spec.name,
                    settings.model,
                    day,
                    reservation.calls,
                    reservation.reserved_usd,
                ],
            )
        conn.execute("COMMIT")
    except Exception:
        rollback(conn)  # a commit that conflicted has ended the transaction already
        raise
    return reservation


def _row(
    spec,
    settings,
    item,
    digest,
    decision,
    result: LlmResult | None,
    reason,
    price,
    run_id,
    sent: dict | None,
    text: str | None = None,
):
    answered = result is not None and result.output is not None
    output = result.output if answered else decision
    model = settings.model if answered else spec.offline_version
    tokens = (
        (result.prompt_tokens, result.cached_tokens, result.completion_tokens)
        if result is not None
        else (0, 0, 0)
    )
    return {
        "decision_id": decision_id(spec.name, settings.prompt_version, model, digest),
        "agent": spec.name,
        "prompt_version": settings.prompt_version,
        "model": model,
        "input_hash": digest,
        "entity_id": str(item["id"]),
        "tier": "llm" if answered else "offline",
        "fallback_reason": reason,
        "input": text if text is not None else canonical_json(item),
        "prompt": json.dumps(prompts.messages(spec.name, settings.prompt_version, sent))
        if result is not None
        else None,
        "output": output.model_dump_json(),
        "raw_output": result.raw_text if result is not None else None,
        "prompt_tokens": tokens[0],
        "cached_tokens": tokens[1],
        "completion_tokens": tokens[2],
        "cost_usd": price.cost(*tokens) if result is not None else 0.0,
        "latency_ms": result.latency_seconds * 1000 if result is not None else 0.0,
        "attempts": result.attempts if result is not None else 0,
        "run_id": run_id,
    }


def _record(
    conn,
    spec,
    settings,
    rows: pl.DataFrame,
    report: RunReport,
    run_id,
    day: date,
    reservation,
    seen=None,
    read_items: tuple[incremental.ItemsRead, list[dict], list[str]] | None = None,
) -> None:
    """In one transaction: the new decisions (``rows``, DECISION_COLUMNS), the money in the
    ledger, the reservation settled, the watermark moved on. An input that a concurrent run
    decided since the memo was read keeps that decision (counted as a memo hit); the calls
    made for it are still paid for. On DuckLake the claim makes two runs recording at once
    conflict: the later runs again and finds the other's decisions."""

    def once() -> pl.DataFrame:
        conn.execute("BEGIN TRANSACTION")
        try:
            claim(conn, "agents")
            decided = _memo(
                conn,
                spec,
                settings,
                sorted(set(rows["input_hash"].to_list())),
                rows["entity_id"].to_list(),
            )
            new = rows.filter(~pl.col("input_hash").is_in(sorted(decided)))
            if new.height:
                conn.register("new_decisions", new)
                conn.execute(
                    "INSERT INTO agents.decisions BY NAME "
                    "SELECT *, now() AS decided_at FROM new_decisions"
                )
                conn.unregister("new_decisions")
            if report.calls:
                conn.execute(
                    "INSERT INTO agents.cost_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
                    [
                        run_id,
                        spec.name,
                        settings.model,
                        day,
                        report.calls,
                        report.failed_calls,
                        report.prompt_tokens,
                        report.cached_tokens,
                        report.completion_tokens,
                        report.cost_usd,
                    ],
                )
            if reservation is not None:
                conn.execute(
                    "DELETE FROM agents.budget_reservations WHERE reservation_id = ?",
                    [reservation.reservation_id],
                )
            if seen is not None:
                incremental.save(conn, spec.name, seen)
            if read_items is not None:
                incremental.record_items(conn, spec.name, *read_items, seen)
            conn.execute("COMMIT")
        except Exception:
            rollback(conn)  # a commit that conflicted has ended the transaction already
            raise
        return new

    new = retry_conflicts(once)
    report.memo_hits += rows.height - new.height
    report.decisions_by_tier.update(dict(new.group_by("tier").len().iter_rows()))
    fell_back = new.drop_nulls("fallback_reason").filter(pl.col("fallback_reason") != "")
    report.fallbacks.update(dict(fell_back.group_by("fallback_reason").len().iter_rows()))
