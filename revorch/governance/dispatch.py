"""The dispatcher: the only code that sends anything out of Revorch.

Read, decide, write; the DuckDB writer is never held while a target is waited on:

1. **Recover** (a short DuckDB transaction): fold what the journal holds from a dispatch that
   died (see :mod:`revorch.governance.journal`). An attempt with no recorded outcome is
   audited as ``dispatch_interrupted`` and its action stays ``sending``, so step 2 takes it
   again. Repair what the target was left with (a torn outbox line).
2. **Decide** (the same short connection): every action that is ready (allowed), approved,
   ``sending`` or due for another try is judged again against the policy in force now, and
   that verdict is recorded. Forbidden now: closed, never sent. Needing approval and not
   approved: back to the approval queue. The rest are marked ``sending`` and their messages
   built. Then the connection is closed.
3. **Deliver**, with no DuckDB connection open: the journal records the attempt, the target
   receives it (under its ``action_id`` as idempotency key), the journal records the outcome,
   then the next action. A webhook takes one action per request; the outbox file appends a
   group of actions with one write and one fsync (``batch_size``), so a group is one
   delivery to it.
4. **Record** (a short DuckDB transaction): fold the journal into the actions (``sent``;
   ``retry`` with a backoff; ``failed`` after ``max_attempts`` or an error that will not
   heal) and the audit trail (``dispatched`` / ``dispatch_failed`` per attempt).

Exactly once: each outcome is durable (in the journal) before the next action is tried; an
attempt cut short by a crash is delivered again under the same key, and the targets do not
act twice on a key (the outbox file holds each action once; a webhook receiver de-duplicates).
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import duckdb

from revorch import clock
from revorch.agents.redact import PLACEHOLDER, known_names, pseudonymise, restore
from revorch.governance.audit import AuditEvent, audited
from revorch.governance.journal import Attempt, Journal, open_journal
from revorch.governance.policy import Judgement, Policy
from revorch.governance.screen import Screen
from revorch.governance.status import update_actions
from revorch.governance.targets import Target
from revorch.governance.verdicts import judge_each, record_policy_version
from revorch.state.backend import retry_conflicts

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]

# Due actions. A ``sending`` action is taken again only if this journal claimed it (or none
# did: those predate the claims, state store version 14).
DUE = """(status IN ('ready', 'approved')
       OR (status = 'sending' AND coalesce(sending_journal, $journal) = $journal)
       OR (status = 'retry' AND next_attempt_at <= $now))"""
# Where each slice ends, in (proposed_at, action_id) order: every $slice-th due action, found
# in one pass. Each slice reading "the next $slice after the last" scanned and sorted every due
# action left, a slice at a time (millions in a first run at ten million contacts).
BOUNDS_SQL = f"""
SELECT proposed_at, action_id FROM (
    SELECT proposed_at, action_id,
           row_number() OVER (ORDER BY proposed_at, action_id) AS n
    FROM governance.actions WHERE {DUE}
) WHERE n % $slice = 0
ORDER BY proposed_at, action_id
"""
# Due actions after the last one taken, up to the slice's bound (none: to the end). The last
# four lines say the same in terms DuckDB's zone maps use to skip row groups: a first run's
# actions share one proposed_at and are stored in action_id order.
DUE_SQL = f"""
SELECT action_id, action_type, source, decision_id, entity_type, entity_id, company_id, reason,
       CAST(payload AS VARCHAR) AS payload, CAST(facts AS VARCHAR) AS facts, status,
       approved_by, attempts, proposed_at, sending_journal, verdict, policy_version,
       verdict_rules
FROM governance.actions
WHERE {DUE}
  AND ($after_at::TIMESTAMPTZ IS NULL OR proposed_at > $after_at
       OR (proposed_at = $after_at AND action_id > $after_id))
  AND ($upto_at::TIMESTAMPTZ IS NULL OR proposed_at < $upto_at
       OR (proposed_at = $upto_at AND action_id <= $upto_id))
  AND ($after_at::TIMESTAMPTZ IS NULL OR proposed_at >= $after_at)
  AND ($upto_at::TIMESTAMPTZ IS NULL OR proposed_at <= $upto_at)
  AND ($low_id::VARCHAR IS NULL OR action_id > $low_id)
  AND ($high_id::VARCHAR IS NULL OR action_id <= $high_id)
ORDER BY proposed_at, action_id
LIMIT $slice
"""

# Due actions decided, delivered and recorded per slice: a slice's actions, messages and audit
# events are all that is held in Python at once (a first run's backlog is about 700,000
# actions at a million contacts).
SLICE_ROWS = 20_000

ATTEMPTED_SQL = """
SELECT action_id, action_type, entity_type, entity_id, company_id, attempts
FROM governance.actions WHERE action_id IN (SELECT unnest($ids))
"""

# Attempts already in the trail: a fold whose journal clean-up was cut short adds nothing twice.
FOLDED_SQL = """
SELECT action_id, CAST(detail->>'attempt' AS INTEGER) FROM governance.audit_log
WHERE event IN ('dispatched', 'dispatch_failed', 'dispatch_interrupted')
  AND action_id IN (SELECT unnest($ids))
"""


@dataclass
class DispatchReport:
    outcomes: Counter = field(default_factory=Counter)
    recovered: int = 0  # attempts of an earlier, interrupted dispatch folded by this one
    repairs: list[dict] = field(default_factory=list)

    def as_metadata(self) -> dict[str, int]:
        return {f"dispatch/{outcome}": n for outcome, n in sorted(self.outcomes.items())}


def backoff(attempt: int) -> timedelta:
    """Wait before try ``attempt + 1``: 1, 2, 4, ... minutes, at most an hour."""
    return timedelta(minutes=min(2 ** (attempt - 1), 60))


def dispatch(
    connect: Connect,
    policy: Policy,
    target: Target,
    *,
    journal_path: Path,
    run_id: str | None,
    anchor_path: Path | None,
    max_attempts: int = 5,
    now: datetime | None = None,
    slice_rows: int = SLICE_ROWS,
) -> DispatchReport:
    """Send every due action that the policy allows now; see the module docstring. Steps 2-4
    run once per slice of ``slice_rows`` due actions, in (proposed_at, action_id) order, so a
    large backlog is never held in memory whole.

    ``connect`` opens a short DuckDB connection (``StateStore.get_connection``); it is called
    once, then once per slice delivered, and no connection is open while the target is
    waited on."""
    report = DispatchReport()
    with open_journal(journal_path) as journal:
        with connect() as conn:
            now = now or clock.now(conn)
            # On DuckLake a transaction that conflicts with a concurrent writer's (another
            # dispatcher, a review, an audited call) rolls back whole: it runs again on the
            # newer snapshot (revorch/state/backend.py).
            report.recovered = retry_conflicts(
                lambda: _fold(conn, journal, report, max_attempts, now, run_id, anchor_path)
            )
            report.repairs = target.repair()
            bounds = [
                tuple(bound)
                for bound in conn.execute(
                    BOUNDS_SQL, {"journal": journal.id, "now": now, "slice": slice_rows}
                ).fetchall()
            ]
            # Steps 2-4 for one slice, given the connection and where the slice starts.
            decide = partial(
                _decide,
                policy=policy,
                target=target,
                report=report,
                now=now,
                run_id=run_id,
                anchor_path=anchor_path,
                journal_id=journal.id,
                slice_rows=slice_rows,
                bounds=bounds,
            )
            go, messages, after = _decide_next(conn, decide, None, report.repairs)
        while go:
            _deliver(journal, target, go, messages, run_id)
            go = messages = []  # delivered: not held while the next slice is decided
            with connect() as conn:
                retry_conflicts(
                    lambda: _fold(conn, journal, report, max_attempts, now, run_id, anchor_path)
                )
                if after is not None:
                    go, messages, after = _decide_next(conn, decide, after, [])
    return report


def _decide_next(
    conn: duckdb.DuckDBPyConnection,
    decide: Callable[..., tuple[list[dict], list[dict], tuple[datetime, str] | None]],
    after: tuple[datetime, str] | None,
    repairs: list[dict],
) -> tuple[list[dict], list[dict], tuple[datetime, str] | None]:
    """Decide slices from ``after`` on until one has actions to send or none is left."""
    while True:
        go, messages, after = retry_conflicts(partial(decide, conn, after=after, repairs=repairs))
        repairs = []
        if go or after is None:
            return go, messages, after


def _deliver(
    journal: Journal, target: Target, go: list[dict], messages: list[dict], run_id: str | None
) -> None:
    """Deliver with no DuckDB connection open: each batch journaled before and after."""
    for start in range(0, len(go), target.batch_size):
        batch = go[start : start + target.batch_size]
        attempts = [(action["action_id"], action["attempts"] + 1) for action in batch]
        journal.started(attempts, target.name, run_id)
        deliveries = target.deliver(messages[start : start + target.batch_size])
        journal.finished(
            [
                (action_id, n, d.ok, d.retryable, d.detail)
                for (action_id, n), d in zip(attempts, deliveries, strict=True)
            ]
        )


def _decide(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    target: Target,
    report: DispatchReport,
    now: datetime,
    run_id: str | None,
    anchor_path: Path | None,
    journal_id: str,
    *,
    after: tuple[datetime, str] | None,
    slice_rows: int,
    bounds: list[tuple[datetime, str]],
    repairs: list[dict],
) -> tuple[list[dict], list[dict], tuple[datetime, str] | None]:
    """Judge the next ``slice_rows`` due actions (those after ``after``, up to the next of
    ``bounds``) again; mark those to send ``sending``, claimed by this dispatcher's journal;
    build their messages. Returns them and where the next slice starts (None: no slice is
    left).

    An action already ``sending`` is taken again only if this journal claimed it (an attempt
    of ours that died): one another dispatcher claimed is being delivered by it, on this
    machine or another, and it recovers it from its own journal if it dies."""
    outcomes: Counter = Counter()  # counted once the transaction commits
    # Read in the transaction that marks them: on DuckLake a concurrent dispatcher's marks
    # then make this commit conflict instead of being overwritten.
    at = bisect.bisect_right(bounds, after) if after else 0
    upto = bounds[at] if at < len(bounds) else None
    # One proposed_at from ``after`` to the bound: the slice is an action_id range.
    same_at = after is not None and upto is not None and after[0] == upto[0]
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        cursor = conn.execute(
            DUE_SQL,
            {
                "now": now,
                "journal": journal_id,
                "after_at": after[0] if after else None,
                "after_id": after[1] if after else None,
                "upto_at": upto[0] if upto else None,
                "upto_id": upto[1] if upto else None,
                "low_id": after[1] if same_at else None,
                "high_id": upto[1] if same_at else None,
                "slice": slice_rows,
            },
        )
        names = [column[0] for column in cursor.description]
        due = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        trail.extend(AuditEvent("outbox_repaired", "dispatcher", r) for r in repairs)
        if not due:
            return [], [], upto  # None: nothing is left; else none is due in this range now
        following = (due[-1]["proposed_at"], due[-1]["action_id"])
        if len(due) < slice_rows:
            following = upto  # the range is done: the next slice starts at its bound
        record_policy_version(conn, policy)
        for action in due:  # parsed once: screened, judged and sent from the same dict
            action["payload"] = json.loads(action["payload"])
        # Only the addresses and domains the due actions' text names: not every contact.
        screen = Screen.from_state(conn, [action["payload"] for action in due])
        updates: list[dict] = []
        go = []
        # Judged again, the model's words screened just before they would leave. A held-out
        # entity gets nothing, whatever was decided before: withheld, audited (a forbidden
        # action stays forbidden: it is not sent either).
        for action, judgement, withheld in judge_each(
            conn, policy, due, screen, trail, "dispatch", now=now, run_id=run_id
        ):
            if withheld is not None:
                updates.append(withheld)
                outcomes["withheld"] += 1
                continue
            update = {"action_id": action["action_id"], **_verdict_changes(action, judgement)}
            if judgement.verdict == "forbid":
                update |= _closed("forbidden", f"forbidden at dispatch by {judgement.rules}")
                outcomes["forbidden"] += 1
            elif judgement.verdict == "approve" and not action["approved_by"]:
                due_at = now + timedelta(hours=policy.approvals.sla_hours)
                update |= {"status": "pending_approval", "approval_due_at": due_at}
                outcomes["sent_for_approval"] += 1
            else:
                # The attempt counter moves when an attempt is folded, not here.
                update |= {
                    "status": "sending",
                    "target": target.name,
                    "sending_journal": journal_id,
                }
                go.append(action)
            updates.append(update)
        update_actions(conn, updates)
    report.outcomes.update(outcomes)
    originals = _personal_data(conn, go, policy)
    messages = [_message(action, originals.get(action["decision_id"])) for action in go]
    return go, messages, following


def _verdict_changes(action: dict, judgement: Judgement) -> dict:
    """The verdict columns that differ from the action's row. Mostly none: the policy judges
    as it did at the proposal. (Rewriting ``verdict_rules``, a list, is a delete and an insert
    of the whole row in DuckDB, so unchanged rows are left alone: the dispatcher's commits
    would otherwise rewrite the table's row groups, about a quarter of its time at 1M.) The
    verdict itself is in the audit trail either way."""
    judged = {
        "verdict": judgement.verdict,
        "policy_version": judgement.policy_version,
        "verdict_rules": list(judgement.rules),
    }
    return {column: value for column, value in judged.items() if action[column] != value}


def _fold(
    conn: duckdb.DuckDBPyConnection,
    journal: Journal,
    report: DispatchReport,
    max_attempts: int,
    now: datetime,
    run_id: str | None,
    anchor_path: Path | None,
) -> int:
    """Write the journal's attempts into the actions and the trail, in one transaction, then
    drop them from the journal. Returns how many attempts were folded."""
    attempts = journal.pending()
    if not attempts:
        return 0
    ids = sorted({a.action_id for a in attempts})
    updates: dict[str, dict] = {}
    outcomes: Counter = Counter()  # counted once the transaction commits
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        cursor = conn.execute(ATTEMPTED_SQL, {"ids": ids})
        names = [column[0] for column in cursor.description]
        actions = {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
        folded = set(conn.execute(FOLDED_SQL, {"ids": ids}).fetchall())
        for attempt in attempts:
            action = actions.get(attempt.action_id)
            if action is None or (attempt.action_id, attempt.attempt) in folded:
                continue
            update = _outcome(attempt, max_attempts, now)
            updates[attempt.action_id] = update  # the latest attempt decides the status
            if not attempt.interrupted:
                outcomes[update["status"]] += 1
            trail.append(_event(attempt, action, update["status"]))
        update_actions(conn, list(updates.values()))
    report.outcomes.update(outcomes)
    journal.forget(attempts)
    return len(attempts)


def _personal_data(
    conn: duckdb.DuckDBPyConnection, actions: list[dict], policy: Policy
) -> dict[str, dict[str, str]]:
    """For the decisions behind actions the policy lets carry personal data back and whose
    text holds a placeholder: what each placeholder stood for, redacted again exactly as the
    agent's prompt was. (Redacting again costs about as much as judging the action: most
    actions' text names no one, and for them there is nothing to put back.)"""
    restorable = policy.data_handling.restore_personal_data_for
    wanted = sorted(
        {
            a["decision_id"]
            for a in actions
            if a["decision_id"]
            and a["action_type"] in restorable
            and _holds_placeholder([a["reason"], a["payload"]])
        }
    )
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT decision_id, any_value(CAST(input AS VARCHAR)) FROM agents.decisions "
        "WHERE decision_id IN (SELECT unnest(?)) GROUP BY decision_id",
        [wanted],
    ).fetchall()
    records = {decision_id: json.loads(text) for decision_id, text in rows}
    names = known_names(conn, list(records.values()))
    return {
        decision_id: pseudonymise(record, known)[1]
        for (decision_id, record), known in zip(records.items(), names, strict=True)
    }


def _holds_placeholder(value: object) -> bool:
    if isinstance(value, str):
        return PLACEHOLDER.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_placeholder(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_placeholder(v) for v in value)
    return False


def _message(action: dict, originals: dict[str, str] | None) -> dict:
    """What the target receives. Agents' words are in ``payload.model_text``, marked
    untrusted; they keep their placeholders for personal data unless ``originals`` (the
    policy allows this action type to carry them) puts them back."""
    message = {
        "action_id": action["action_id"],
        "action_type": action["action_type"],
        "source": action["source"],
        "decision_id": action["decision_id"],
        "entity_type": action["entity_type"],
        "entity_id": action["entity_id"],
        "company_id": action["company_id"],
        "reason": action["reason"],
        "payload": action["payload"],
        "approved_by": action["approved_by"],
        "proposed_at": action["proposed_at"].isoformat(),
    }
    if originals:
        message["reason"] = restore(message["reason"], originals)
        message["payload"] = restore(message["payload"], originals)
    return message


def _outcome(attempt: Attempt, max_attempts: int, now: datetime) -> dict:
    action_id, n = attempt.action_id, attempt.attempt
    counted = {"action_id": action_id, "attempts": n}
    if attempt.interrupted:
        # Outcome unknown: stays 'sending', so this dispatch delivers it again, same key.
        return {**counted, "status": "sending", "last_error": "interrupted; outcome unknown"}
    if attempt.ok:
        return {**counted, "status": "sent", "sent_at": now}
    if attempt.retryable and n < max_attempts:
        return {
            **counted,
            "status": "retry",
            "next_attempt_at": now + backoff(n),
            "last_error": attempt.detail,
        }
    return {
        **counted,
        **_closed("failed", f"gave up after {n} attempts: {attempt.detail}"),
        "last_error": attempt.detail,
    }


def _closed(status: str, resolution: str) -> dict:
    return {"status": status, "resolution": resolution}


def _event(attempt: Attempt, action: dict, outcome: str) -> AuditEvent:
    if attempt.interrupted:
        event = "dispatch_interrupted"
    else:
        event = "dispatched" if attempt.ok else "dispatch_failed"
    return AuditEvent(
        event,
        "dispatcher",
        {
            "target": attempt.target,
            "detail": attempt.detail or "",
            "outcome": outcome,
            "attempt": attempt.attempt,
            "idempotency_key": attempt.action_id,
            "attempt_run_id": attempt.run_id,
            "started_at": attempt.started_at,
            "finished_at": attempt.finished_at,
            "action_type": action["action_type"],
        },
        action_id=attempt.action_id,
        entity_type=action["entity_type"],
        entity_id=action["entity_id"],
        company_id=action["company_id"],
    )
