"""Governance as assets, in the order an action lives through:

proposed actions -> policy verdicts -> approval queue -> dispatched actions -> audit trail

Agents and handoffs only propose. The policy judges, people approve, and only
``dispatched_actions`` sends anything out, judging every action again just before it does.
Each step writes its audit events in the same transaction as its change.
"""

import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from orch_assets.agents.assets import agent_assets
from orch_assets.handoffs.assets import handoff_assets
from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL, RebuildConfig
from resources import AgentsConfigResource, DispatcherResource, GovernanceResource, StateStore
from revorch import settings
from revorch.governance.actions import propose
from revorch.governance.approvals import Review, ReviewError, escalate_and_expire, review
from revorch.governance.audit import Anchor
from revorch.governance.dispatch import dispatch
from revorch.governance.verdicts import judge_proposed

PROPOSED_ACTIONS = dg.AssetKey(["governance", "proposed_actions"])
POLICY_VERDICTS = dg.AssetKey(["governance", "policy_verdicts"])
APPROVAL_QUEUE = dg.AssetKey(["governance", "approval_queue"])
DISPATCHED_ACTIONS = dg.AssetKey(["governance", "dispatched_actions"])
AUDIT_TRAIL = dg.AssetKey(["governance", "audit_trail"])
RUN_SUMMARY = dg.AssetKey(["governance", "run_summary"])
RUN_SUMMARY_SQL = (Path(__file__).parent / "run_summary.sql").read_text()

EAGER = dg.AutomationCondition.eager()
STATUS_COUNTS = "SELECT status, count(*) FROM governance.actions GROUP BY status"


def _status_counts(conn) -> dict[str, int]:
    return {f"actions/{status}": n for status, n in conn.execute(STATUS_COUNTS).fetchall()}


def governance_asset(key: dg.AssetKey, deps: list[dg.AssetKey], **kwargs):
    """The shared shape of a governance step: DuckDB writer pool, eager, group governance."""
    return dg.asset(
        key=key,
        deps=deps,
        group_name="governance",
        kinds={"duckdb"},
        pool=DUCKDB_WRITER_POOL,
        automation_condition=EAGER,
        **kwargs,
    )


@governance_asset(
    PROPOSED_ACTIONS,
    deps=[
        *(key for assets_def in [*agent_assets, *handoff_assets] for key in assets_def.keys),
        dg.AssetKey(["stages", "onboarding"]),
        dg.AssetKey(["stages", "waiting_references"]),
    ],
)
def proposed_actions(
    context: dg.AssetExecutionContext,
    config: RebuildConfig,
    state_store: StateStore,
    governance: GovernanceResource,
    agents: AgentsConfigResource,
):
    """The outbox: every action the agents recommend and the handoffs call for (assign an
    owner, follow up, offer a discount, escalate, notify a CSM, ...), each with its reason and
    the decision behind it, proposed once. Nothing is sent from here. Looks at what changed
    since the last run; ``full_rebuild`` looks at everything (and finds the same actions)."""
    with state_store.get_connection() as conn:
        proposed = propose(
            conn,
            run_id=context.run_id,
            anchor_path=governance.anchor,
            full=config.full_rebuild,
            # The agents' inputs are read again as the agents read them.
            models=agents.load().models,
        )
        by_type = conn.execute(
            "SELECT action_type, count(*) FROM governance.actions "
            "WHERE proposed_run_id = ? GROUP BY ALL",
            [context.run_id],
        ).fetchall()
        total = conn.execute("SELECT count(*) FROM governance.actions").fetchone()[0]
    return dg.MaterializeResult(
        metadata={
            "proposed": proposed,
            **{f"proposed/{action_type}": n for action_type, n in by_type},
            "dagster/row_count": total,
        }
    )


@governance_asset(POLICY_VERDICTS, deps=[PROPOSED_ACTIONS])
def policy_verdicts(
    context: dg.AssetExecutionContext, state_store: StateStore, governance: GovernanceResource
):
    """The policy's verdict on every new action (allow, approve or forbid), recorded with the
    policy version (config/policy.yaml, docs/governance.md)."""
    policy = governance.policy()
    with state_store.get_connection() as conn:
        verdicts = judge_proposed(
            conn, policy, run_id=context.run_id, anchor_path=governance.anchor
        )
    return dg.MaterializeResult(
        metadata={
            "policy_version": policy.digest,
            "policy_label": policy.version,
            **{
                f"verdict/{v}": verdicts.get(v, 0)
                for v in ("allow", "approve", "forbid", "withhold")
            },
        }
    )


class ReviewConfig(dg.Config):
    """A person's review, given in the launchpad (job ``review_actions``) or by
    ``revorch approvals approve|reject``. Empty: only escalate and expire."""

    action_ids: list[str] = Field(default_factory=list, description="Actions to review.")
    decision: str = Field(default="", description="approve or reject")
    reviewer: str = Field(default="", description="Who decides (recorded in the audit trail).")
    comment: str = Field(default="", description="Why; required to reject.")


@governance_asset(APPROVAL_QUEUE, deps=[POLICY_VERDICTS])
def approval_queue(
    context: dg.AssetExecutionContext,
    config: ReviewConfig,
    state_store: StateStore,
    governance: GovernanceResource,
):
    """Actions waiting for a person: open the approvals inbox (the ``inbox`` link) to review
    them. Applies a review when one is given; escalates approvals past their SLA (a
    notify_approver action) and closes those past expiry."""
    policy = governance.policy()
    reviewed = 0
    with state_store.get_connection() as conn:
        if config.action_ids or config.decision:
            request = Review(config.action_ids, config.decision, config.reviewer, config.comment)
            try:
                reviewed = review(
                    conn, request, run_id=context.run_id, anchor_path=governance.anchor
                )
            except ReviewError as error:
                raise dg.Failure(description=f"review not applied: {error}") from error
            context.log.info(f"{config.reviewer}: {config.decision} {reviewed} actions")
        escalated, expired = escalate_and_expire(
            conn, policy, run_id=context.run_id, anchor_path=governance.anchor
        )
        pending, oldest_hours = conn.execute(
            "SELECT count(*), coalesce(max(epoch(clock_now() - proposed_at)) / 3600, 0) "
            "FROM governance.approval_queue"
        ).fetchone()
    return dg.MaterializeResult(
        metadata={
            "approvals_pending": pending,
            "oldest_pending_hours": round(oldest_hours, 2),
            "reviewed": reviewed,
            "escalated": escalated,
            "expired": expired,
            # A link in the UI to the page where reviewers approve or reject them.
            "inbox": dg.MetadataValue.url(settings.inbox_url()),
        }
    )


# Not in the writer pool: the dispatcher waits on targets, and takes the DuckDB connection
# only for short transactions (decide, then record, per slice of due actions), so ingestion
# never waits on it.
@dg.asset(
    key=DISPATCHED_ACTIONS,
    deps=[APPROVAL_QUEUE],
    group_name="governance",
    kinds={"duckdb"},
    automation_condition=EAGER,
)
def dispatched_actions(
    context: dg.AssetExecutionContext,
    state_store: StateStore,
    governance: GovernanceResource,
    dispatcher: DispatcherResource,
):
    """The dispatcher: sends every allowed or approved action to its target (the outbox file,
    or a webhook) exactly once, after judging it again against the policy in force now. Each
    attempt is journaled before and after it is made, and a dispatch that died is recovered
    by the next one (docs/governance.md)."""
    target = dispatcher.target()
    report = dispatch(
        state_store.get_connection,
        governance.policy(),
        target,
        journal_path=dispatcher.journal,
        run_id=context.run_id,
        anchor_path=governance.anchor,
        max_attempts=dispatcher.max_attempts,
    )
    with state_store.get_connection() as conn:
        counts = _status_counts(conn)
    if report.recovered:
        context.log.warning(f"recovered {report.recovered} attempts of an interrupted dispatch")
    for repair in report.repairs:
        context.log.warning(f"repaired the outbox: {repair}")
    context.log.info(f"dispatch to {target.name}: {dict(report.outcomes)}")
    return dg.MaterializeResult(
        metadata={
            "target": target.name,
            **report.as_metadata(),
            "recovered_attempts": report.recovered,
            "outbox_repairs": len(report.repairs),
            **counts,
        }
    )


@governance_asset(AUDIT_TRAIL, deps=[DISPATCHED_ACTIONS])
def audit_trail(state_store: StateStore):
    """The append-only, hash-chained audit trail. Its head is kept in this materialization's
    metadata (an anchor in Dagster's event log) and in the anchor file; the check
    ``audit_chain_intact`` and ``revorch audit verify`` recompute the chain against both."""
    with state_store.get_connection() as conn:
        # The head row alone (not arg_max over every row's hash): a run's cost is not the trail's.
        seq, head = conn.execute(
            "SELECT seq, hash FROM governance.audit_log ORDER BY seq DESC LIMIT 1"
        ).fetchone() or (0, None)
        events = conn.execute(
            "SELECT event, count(*) FROM governance.audit_log GROUP BY ALL"
        ).fetchall()
    return dg.MaterializeResult(
        metadata={
            "audit/head_seq": seq,
            "audit/head_hash": head or "",
            **{f"events/{event}": n for event, n in events},
            "dagster/row_count": seq,
        }
    )


def record_anchor(instance: dg.DagsterInstance, seq: int, head: str) -> None:
    """Keep a head written outside a run (an MCP call's audit row) in the event log, as an
    observation of ``governance/audit_trail``: an anchor, and no materialization that would
    set off the assets downstream of it."""
    instance.report_runless_asset_event(
        dg.AssetObservation(AUDIT_TRAIL, metadata={"audit/head_seq": seq, "audit/head_hash": head})
    )


def dagster_anchors(instance: dg.DagsterInstance, page: int = 1000) -> list[Anchor]:
    """The audit trail's heads kept in the instance's event log, one per materialization of
    ``governance/audit_trail`` and per head an MCP call recorded (:func:`record_anchor`):
    anchors the state store's writer does not rewrite."""
    return [
        *_anchors(instance.fetch_materializations, page),
        *_anchors(instance.fetch_observations, page),
    ]


def _anchors(fetch, page: int) -> list[Anchor]:
    anchors, cursor = [], None
    while True:
        result = fetch(AUDIT_TRAIL, limit=page, cursor=cursor)
        for record in result.records:
            metadata = record.asset_event.metadata
            if "audit/head_seq" in metadata and metadata["audit/head_seq"].value:
                anchors.append(
                    Anchor(
                        int(metadata["audit/head_seq"].value),
                        str(metadata["audit/head_hash"].value),
                        f"Dagster run {record.run_id}" if record.run_id else "Dagster",
                    )
                )
        if not result.has_more:
            return anchors
        cursor = result.cursor


@governance_asset(RUN_SUMMARY, deps=[AUDIT_TRAIL])
def run_summary(context: dg.AssetExecutionContext, state_store: StateStore):
    """This run's figures, numeric so the UI plots them over runs: events received and
    quarantined, decisions and their cost, actions by verdict, sent, errors, approvals
    pending, stage moves and conversions, pipeline value and ARR the actions touched."""
    with state_store.get_connection() as conn:
        cursor = conn.execute(RUN_SUMMARY_SQL, {"run_id": context.run_id})
        names = [column[0] for column in cursor.description]
        figures = dict(zip(names, cursor.fetchone(), strict=True))
    started = context.instance.get_run_stats(context.run_id).start_time
    if started:
        figures["duration_seconds"] = round(time.time() - started, 2)
    return dg.MaterializeResult(
        metadata={
            name: float(value) if name.endswith(("usd", "touched")) else value
            for name, value in figures.items()
        }
    )


governance_assets = [
    proposed_actions,
    policy_verdicts,
    approval_queue,
    dispatched_actions,
    audit_trail,
    run_summary,
]
