"""Governance checks: the trail is intact, nothing left without a verdict that allowed it,
and no prompt that left the process carried personal data."""

import json
import os
from datetime import datetime
from pathlib import Path

import dagster as dg
from pydantic import Field

from orch_assets.agents.assets import agent_assets
from orch_assets.governance.assets import AUDIT_TRAIL, DISPATCHED_ACTIONS, dagster_anchors
from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from resources import GovernanceResource, StateStore
from revorch.agents.redact import prompt_leaks, stored_prompts
from revorch.governance.audit import read_checkpoint, verify, write_checkpoint

SAMPLE = 10


def _sample_table(rows: list[dict]) -> dg.MetadataValue:
    return dg.MetadataValue.json(rows[:SAMPLE])


@dg.asset_check(
    asset=AUDIT_TRAIL,
    description="Recompute the hash chain from the last verified anchor and match the anchors "
    "(file and Dagster event log); rows after the last anchor are unanchored. "
    "`revorch audit verify` recomputes the whole chain.",
    pool=DUCKDB_WRITER_POOL,
)
def audit_chain_intact(
    context: dg.AssetCheckExecutionContext, state_store: StateStore, governance: GovernanceResource
):
    anchors = dagster_anchors(context.instance)
    # Incremental: rows up to the last verified anchor were recomputed by an earlier check.
    since = read_checkpoint(governance.anchor)
    with state_store.get_connection() as conn:
        report = verify(
            conn,
            governance.anchor,
            dagster_anchors=anchors,
            since=since,
            progress=lambda done, total: context.log.info(
                f"audit chain: {done:,} of {total:,} rows recomputed"
            ),
        )
    write_checkpoint(governance.anchor, report)
    return dg.AssetCheckResult(
        passed=report.intact,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            **report.as_metadata(),
            "problems": dg.MetadataValue.json(report.summary()),
            "notices": dg.MetadataValue.json(report.notices),
        },
    )


# A sent action must have a verdict recorded at dispatch that let it go: allow, or approve
# with a person's approval. {scope} narrows the sent actions looked at, and {events} their
# verdicts and approvals to theirs, so the JSON of no other row is read.
SENT_WITHOUT_VERDICT = """
WITH sent AS (
    SELECT action_id, action_type, source, entity_id, verdict, sent_at FROM governance.actions
    WHERE status = 'sent' {scope}
),
events AS (
    SELECT action_id, event, detail FROM governance.audit_log
    WHERE event IN ('verdict', 'approved') {events}
)
SELECT a.* FROM sent AS a
WHERE NOT EXISTS (
    SELECT 1 FROM events AS v
    WHERE v.action_id = a.action_id AND v.event = 'verdict' AND (v.detail->>'stage') = 'dispatch'
      AND ((v.detail->>'verdict') = 'allow'
           OR ((v.detail->>'verdict') = 'approve' AND EXISTS (
                   SELECT 1 FROM events AS p
                   WHERE p.action_id = a.action_id AND p.event = 'approved'))))
ORDER BY a.sent_at DESC
"""
SENT_WITHOUT_VERDICT_SQL = SENT_WITHOUT_VERDICT.format(scope="", events="")  # every one
# Those sent since the last check that passed: dispatched after the trail's head it saw (the
# chain orders commits), or changed since it ran (a status set to sent by anything else).
SENT_SINCE_SQL = SENT_WITHOUT_VERDICT.format(
    scope="AND (updated_at >= $since_at OR action_id IN ("
    "SELECT action_id FROM governance.audit_log WHERE seq > $since_seq AND event = 'dispatched'))",
    events="AND action_id IN (SELECT action_id FROM sent)",
)


class SentCheckConfig(dg.Config):
    full_check: bool = Field(
        default=False,
        description="Look at every sent action, not only those sent since the last check that "
        "passed (the first check, and one after a failure, look at all since then anyway).",
    )


def sent_checkpoint_path(anchor_path: Path) -> Path:
    """Where the last passing check's trail head and time are kept: beside the anchor file."""
    return anchor_path.with_name(f"{anchor_path.name}.sent-checked")


def _read_sent_checkpoint(path: Path) -> tuple[int, datetime] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        return int(found["seq"]), datetime.fromisoformat(found["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: every sent action is looked at


@dg.asset_check(
    asset=DISPATCHED_ACTIONS,
    description="Every sent action has a recorded dispatch verdict that allowed it. Looks at "
    "the actions sent since the last check that passed; `full_check` looks at all.",
    pool=DUCKDB_WRITER_POOL,
)
def nothing_sent_without_a_verdict(
    config: SentCheckConfig, state_store: StateStore, governance: GovernanceResource
):
    path = sent_checkpoint_path(governance.anchor)
    since = None if config.full_check else _read_sent_checkpoint(path)
    with state_store.get_connection() as conn:
        conn.execute("BEGIN TRANSACTION")  # one snapshot: the head seen is the one checked up to
        head, now = conn.execute(
            "SELECT coalesce(max(seq), 0), now() FROM governance.audit_log"
        ).fetchone()
        if since is not None and since[0] > head:
            since = None  # not this trail's checkpoint: look at everything
        if since is None:
            cursor = conn.execute(SENT_WITHOUT_VERDICT_SQL)
        else:
            cursor = conn.execute(SENT_SINCE_SQL, {"since_seq": since[0], "since_at": since[1]})
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        sent = conn.execute(
            "SELECT count(*) FROM governance.actions WHERE status = 'sent'"
        ).fetchone()[0]
        conn.execute("COMMIT")
    if not rows:  # a failure is looked at again until it is put right
        path.parent.mkdir(parents=True, exist_ok=True)  # no anchor yet when nothing was sent
        partial = path.with_name(f"{path.name}.partial")
        partial.write_text(json.dumps({"seq": head, "at": now.isoformat()}) + "\n")
        os.replace(partial, path)
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "sent": sent,
            "looked_at": "every sent action" if since is None else f"sent after row {since[0]}",
            "sent_without_verdict": len(rows),
            "sample": dg.MetadataValue.json(json.loads(json.dumps(rows[:SAMPLE], default=str))),
        },
    )


AGENT_KEYS = [key for assets_def in agent_assets for key in assets_def.keys]


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "prompts_hold_no_personal_data",
            asset=key,
            description="No stored prompt holds personal data: a name the CRM holds (people, "
            "owners, companies), an email, phone, IBAN, card number, national id or IP address. "
            "Blocking: a leak fails the run.",
            blocking=True,
        )
        for key in AGENT_KEYS
    ],
    pool=DUCKDB_WRITER_POOL,
)
def prompts_hold_no_personal_data(state_store: StateStore):
    for key in AGENT_KEYS:
        with state_store.get_connection() as conn:
            prompts = stored_prompts(conn, key.path[-1])
        leaks = prompt_leaks(prompts)  # with the state store closed: it takes a while
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="prompts_hold_no_personal_data",
            passed=not leaks,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "prompts_checked": len(prompts),
                "prompts_with_personal_data": len(leaks),
                "sample": _sample_table(leaks),
            },
        )


governance_checks = [
    audit_chain_intact,
    nothing_sent_without_a_verdict,
    prompts_hold_no_personal_data,
]
