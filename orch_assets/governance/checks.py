"""Governance checks: the trail is intact, nothing left without a verdict that allowed it,
and no prompt that left the process carried personal data."""

import json

import dagster as dg

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
        report = verify(conn, governance.anchor, dagster_anchors=anchors, since=since)
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
# with a person's approval.
SENT_WITHOUT_VERDICT_SQL = """
SELECT a.action_id, a.action_type, a.source, a.entity_id, a.verdict, a.sent_at
FROM governance.actions AS a
WHERE a.status = 'sent' AND NOT EXISTS (
    SELECT 1 FROM governance.audit_log AS v
    WHERE v.action_id = a.action_id AND v.event = 'verdict' AND (v.detail->>'stage') = 'dispatch'
      AND ((v.detail->>'verdict') = 'allow'
           OR ((v.detail->>'verdict') = 'approve' AND EXISTS (
                   SELECT 1 FROM governance.audit_log AS p
                   WHERE p.action_id = a.action_id AND p.event = 'approved'))))
ORDER BY a.sent_at DESC
"""


@dg.asset_check(
    asset=DISPATCHED_ACTIONS,
    description="Every sent action has a recorded dispatch verdict that allowed it.",
    pool=DUCKDB_WRITER_POOL,
)
def nothing_sent_without_a_verdict(state_store: StateStore):
    with state_store.get_connection() as conn:
        cursor = conn.execute(SENT_WITHOUT_VERDICT_SQL)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        sent = conn.execute(
            "SELECT count(*) FROM governance.actions WHERE status = 'sent'"
        ).fetchone()[0]
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "sent": sent,
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
