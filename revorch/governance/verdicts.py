"""The policy's verdict on every proposed action, recorded with the policy version.

``allow`` makes an action ready to dispatch, ``approve`` puts it in the approval queue with
a due time, ``forbid`` closes it: a forbidden action is never dispatched. The dispatcher
judges every action again just before it sends it (``dispatch.py``), so a policy that
changed since is the one that counts.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from revorch import clock
from revorch.governance.audit import SLICES_PER_TRANSACTION, AuditEvent, audited
from revorch.governance.holdouts import (
    HOLDOUT,
    assign,
    playbook_of,
    withheld_event,
    withheld_update,
)
from revorch.governance.policy import Judgement, Policy
from revorch.governance.screen import Screen, payload_of, screened
from revorch.governance.status import update_actions
from revorch.state.backend import retry_conflicts

STATUS_FOR = {"allow": "ready", "approve": "pending_approval", "forbid": "forbidden"}


def record_policy_version(conn: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    """Keep the policy text behind a version the first time a verdict names it."""
    conn.execute(
        """
        INSERT INTO governance.policy_versions
        SELECT ?, ?, now(), ?
        WHERE NOT EXISTS (SELECT 1 FROM governance.policy_versions WHERE policy_version = ?)
        """,
        [
            policy.digest,
            policy.version,
            json.dumps(policy.model_dump(mode="json", by_alias=True)),
            policy.digest,
        ],
    )


def verdict_event(action: dict, judgement: Judgement, stage: str) -> AuditEvent:
    return AuditEvent(
        "verdict",
        f"policy:{judgement.policy_version}",
        {
            "verdict": judgement.verdict,
            "rules": list(judgement.rules),
            "stage": stage,
            "action_type": action["action_type"],
        },
        action_id=action["action_id"],
        entity_type=action["entity_type"],
        entity_id=action["entity_id"],
        company_id=action["company_id"],
    )


def judge(policy: Policy, action: dict, screen: Screen) -> Judgement:
    """The policy's verdict on an action, held for a person if its model text is suspect."""
    judgement = policy.judge(action["action_type"], action["source"], json.loads(action["facts"]))
    return screened(judgement, screen.findings(payload_of(action)))


# Actions judged per slice: a slice's rows, verdicts and audit events are all that is held
# in Python at once (a first run proposes about 700,000 actions at a million contacts).
SLICE_ROWS = 20_000

ONLY = "($only::VARCHAR[] IS NULL OR action_id IN (SELECT unnest($only::VARCHAR[])))"
# Where each slice ends: every $slice-th proposed action id, found in one pass. A slice then
# reads its own id range, which DuckDB's zone maps find without scanning the rest (a first
# run's actions are stored in id order); after the last bound, up to the end. Each slice
# reading "the next $slice after the last" scanned and sorted every action still proposed:
# 8M actions at 10M contacts took minutes a slice.
BOUNDS_SQL = f"""
SELECT action_id FROM (
    SELECT action_id, row_number() OVER (ORDER BY action_id) AS n
    FROM governance.actions WHERE status = 'proposed' AND {ONLY}
) WHERE n % $slice = 0
ORDER BY action_id
"""
PROPOSED_SQL = f"""
SELECT action_id, action_type, source, entity_type, entity_id, company_id,
       CAST(facts AS VARCHAR) AS facts, CAST(payload AS VARCHAR) AS payload
FROM governance.actions
WHERE status = 'proposed' AND action_id > $after
  AND ($upto::VARCHAR IS NULL OR action_id <= $upto) AND {ONLY}
ORDER BY action_id
LIMIT $slice
"""


def judge_proposed(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    *,
    run_id: str | None,
    anchor_path: Path | None,
    now: datetime | None = None,
    only: list[str] | None = None,
    slice_rows: int = SLICE_ROWS,
    slices_per_transaction: int = SLICES_PER_TRANSACTION,
) -> Counter:
    """Judge every action still ``proposed`` (or those of them in ``only``); return the count
    of each verdict. ``slice_rows`` actions at a time (in ``action_id`` order, as a whole),
    committed ``slices_per_transaction`` slices at a time: an action judged leaves
    ``proposed``, so a run that dies part-way leaves the next one the rest. On DuckLake a
    commit that conflicts with a concurrent writer's runs again on the newer snapshot
    (``retry_conflicts``), from the last commit."""
    now = now or clock.now(conn)
    committed: Counter = Counter()  # kept across a retry: those verdicts stay
    judged = retry_conflicts(
        lambda: _judge(
            conn,
            policy,
            run_id,
            anchor_path,
            now,
            only,
            slice_rows,
            slices_per_transaction,
            committed,
        )
    )
    return committed + judged


def _judge(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    run_id: str | None,
    anchor_path: Path | None,
    now: datetime,
    only: list[str] | None,
    slice_rows: int,
    slices_per_transaction: int,
    committed: Counter,
) -> Counter:
    """The verdicts of the last transaction; those of the earlier ones go into ``committed``
    as they commit."""
    verdicts: Counter = Counter()
    with audited(conn, run_id=run_id, anchor_path=anchor_path) as trail:
        record_policy_version(conn, policy)
        screen = Screen.from_state(conn)
        bounds = conn.execute(BOUNDS_SQL, {"only": only, "slice": slice_rows}).fetchall()
        bounds = [bound for (bound,) in bounds]
        after, slices = "", 0
        while True:
            at = bisect.bisect_right(bounds, after)
            upto = bounds[at] if at < len(bounds) else None
            cursor = conn.execute(
                PROPOSED_SQL, {"after": after, "upto": upto, "only": only, "slice": slice_rows}
            )
            names = [column[0] for column in cursor.description]
            actions = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
            if not actions:
                if upto is None:
                    break
                after = upto  # judged since the bounds were read (a concurrent run)
                continue
            _judge_slice(conn, policy, actions, screen, verdicts, trail, now, run_id)
            trail.flush()
            after = actions[-1]["action_id"]
            slices += 1
            if slices % slices_per_transaction == 0:
                trail.commit()
                committed.update(verdicts)
                verdicts.clear()
    return verdicts


def judge_each(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    actions: list[dict],
    screen: Screen,
    trail: list[AuditEvent],
    when: str,
    *,
    now: datetime,
    run_id: str | None,
) -> Iterator[tuple[dict, Judgement, dict | None]]:
    """Each action with the policy's judgement and, for one withheld, its update; the verdict
    or withheld event goes into ``trail`` first. A held-out entity's action is withheld
    unless the rules forbid it outright: forbid, then withhold, then approve (a person need
    not review, nor a dispatcher send, what a holdout keeps back)."""
    arms, events = assign(conn, policy.holdouts, policy.digest, actions, now=now, run_id=run_id)
    trail.extend(events)
    for action in actions:
        judgement = judge(policy, action, screen)
        if arms.get(action["action_id"]) == HOLDOUT and judgement.verdict != "forbid":
            playbook = playbook_of(action["source"], action["action_type"])
            trail.append(withheld_event(action, playbook, policy.digest, when))
            yield action, judgement, withheld_update(action, playbook, policy.digest)
        else:
            trail.append(verdict_event(action, judgement, when))
            yield action, judgement, None


def _judge_slice(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    actions: list[dict],
    screen: Screen,
    verdicts: Counter,
    trail: list[AuditEvent],
    now: datetime,
    run_id: str | None,
) -> None:
    due = now + timedelta(hours=policy.approvals.sla_hours)
    judged = []
    for action, judgement, withheld in judge_each(
        conn, policy, actions, screen, trail, "proposal", now=now, run_id=run_id
    ):
        if withheld is not None:
            verdicts["withhold"] += 1
            judged.append(withheld)
            continue
        verdicts[judgement.verdict] += 1
        judged.append(
            {
                "action_id": action["action_id"],
                "status": STATUS_FOR[judgement.verdict],
                "verdict": judgement.verdict,
                "policy_version": judgement.policy_version,
                "verdict_rules": list(judgement.rules),
                "approval_due_at": due if judgement.verdict == "approve" else None,
                "resolution": f"forbidden by {', '.join(judgement.rules)}"
                if judgement.verdict == "forbid"
                else None,
            }
        )
    update_actions(conn, judged)
