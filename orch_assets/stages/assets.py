"""The revenue lifecycle as assets: lead -> MQL -> SQL -> opportunity -> customer ->
onboarding -> adoption/health -> renewal -> expansion.

Two assets run the state machines (contacts, accounts) incrementally; every stage asset
after them is a view or a small table over their result, with its SQL in a file beside this
module.
"""

from pathlib import Path

import dagster as dg

from orch_assets.ingestion.assets import CURRENT_STATE_TABLES, DUCKDB_WRITER_POOL, RebuildConfig
from orch_assets.sql_files import run_sql_file
from resources import LifecycleConfigResource, StateStore
from revorch.lifecycle.config import LifecycleConfig
from revorch.lifecycle.runner import refresh_account_lifecycle, refresh_contact_lifecycle

SQL_DIR = Path(__file__).parent
EAGER = dg.AutomationCondition.eager()


def crm(table: str) -> dg.AssetKey:
    return dg.AssetKey(["crm", table])


CONTACT_LIFECYCLE = dg.AssetKey(["stages", "contact_lifecycle"])
ACCOUNT_LIFECYCLE = dg.AssetKey(["stages", "account_lifecycle"])


def _stage_counts(conn, entity_type: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT stage, count(*) FROM stages.entity_stages WHERE entity_type = ? GROUP BY stage",
        [entity_type],
    ).fetchall()
    return {f"in_stage/{stage}": count for stage, count in rows}


def lifecycle_asset(key, *, entity_type, refresh, deps, description) -> dg.AssetsDefinition:
    """An asset that runs one state machine over the entities touched since its last run."""

    @dg.asset(
        key=key,
        deps=deps,
        description=description,
        group_name="lifecycle",
        kinds={"duckdb"},
        pool=DUCKDB_WRITER_POOL,
        automation_condition=EAGER,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: RebuildConfig,
        state_store: StateStore,
        lifecycle: LifecycleConfigResource,
    ):
        with state_store.get_connection() as conn:
            result = refresh(conn, lifecycle.load(), full_rebuild=config.full_rebuild)
            counts = _stage_counts(conn, entity_type)
        context.log.info(f"{entity_type} lifecycle: {result}")
        return dg.MaterializeResult(
            metadata={
                "entities_recomputed": result.entities,
                "transitions_written": result.transitions,
                "forbidden_moves": result.forbidden,
                **counts,
            }
        )

    return _asset


contact_lifecycle = lifecycle_asset(
    CONTACT_LIFECYCLE,
    entity_type="contact",
    refresh=refresh_contact_lifecycle,
    deps=[crm("contacts"), crm("deals"), crm("activities")],
    description="Each contact's stage (lead, mql, sql, opportunity, customer, disqualified), "
    "every move it made and why, and the moves the state machine refused. Recomputes the "
    "contacts touched since the last run.",
)
account_lifecycle = lifecycle_asset(
    ACCOUNT_LIFECYCLE,
    entity_type="company",
    refresh=refresh_account_lifecycle,
    deps=[crm("subscriptions"), crm("companies")],
    description="Each customer account's stage (onboarding, adoption, renewal, churned) and its "
    "moves. Recomputes accounts whose subscriptions changed or whose time-based moves fell due.",
)


def sql_parameters(config: LifecycleConfig) -> dict[str, object]:
    """Every threshold the stage and handoff SQL files may name, from the lifecycle config."""
    handoffs, accounts = config.handoffs, config.accounts
    return {
        "owner_role": handoffs.onboarding.owner_role,
        "task_names": [t.task for t in handoffs.onboarding.tasks],
        "task_days": [t.due_days for t in handoffs.onboarding.tasks],
        "activation_utilization": accounts.activation_utilization,
        "renewal_window_days": accounts.renewal_window_days,
        "lookback_days": handoffs.renewal_risk.lookback_days,
        "usage_drop": handoffs.renewal_risk.usage_drop,
        "angry_priorities": handoffs.renewal_risk.angry_ticket_priorities,
        "angry_csat_at_most": handoffs.renewal_risk.angry_csat_at_most,
        "angry_tickets": handoffs.renewal_risk.angry_tickets,
        "expansion_utilization": handoffs.expansion.utilization,
        "fresh_signal_days": handoffs.follow_up.fresh_signal_days,
        "accelerated_days": handoffs.follow_up.cadence_days["accelerated"],
        "buying_signals": config.engagement.buying_signals,
        "sla_stages": list(handoffs.sla.first_touch_hours),
        "sla_hours": list(handoffs.sla.first_touch_hours.values()),
        "touch_activities": handoffs.sla.touch_activities,
        "escalate_to_role": handoffs.sla.escalate_to_role,
    }


def sql_asset(
    key: list[str],
    *,
    sql_files: list[Path],
    relation: str,
    deps: list[dg.AssetKey],
    description: str,
    group_name: str,
    summary_sql: str | None = None,
) -> dg.AssetsDefinition:
    """An asset that runs its SQL files (views or tables) and reports rows and a summary."""

    @dg.asset(
        key=key,
        deps=deps,
        description=description,
        group_name=group_name,
        kinds={"duckdb"},
        pool=DUCKDB_WRITER_POOL,
        automation_condition=EAGER,
    )
    def _asset(state_store: StateStore, lifecycle: LifecycleConfigResource):
        parameters = sql_parameters(lifecycle.load())
        with state_store.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            for path in sql_files:
                run_sql_file(conn, path, parameters)
            conn.execute("COMMIT")
            metadata = {
                "dagster/row_count": conn.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]
            }
            if summary_sql:
                cursor = conn.execute(summary_sql.format(relation=relation))
                names = [column[0] for column in cursor.description]
                metadata |= {
                    name: value
                    for name, value in zip(names, cursor.fetchone(), strict=True)
                    if value is not None
                }
        return dg.MaterializeResult(metadata=metadata)

    return _asset


def stage_view(name: str, deps: list[dg.AssetKey], description: str, summary_sql=None):
    return sql_asset(
        ["stages", name],
        sql_files=[SQL_DIR / f"{name}.sql"],
        relation=f"stages.{name}",
        deps=deps,
        description=description,
        group_name="stages",
        summary_sql=summary_sql,
    )


leads = stage_view("leads", [CONTACT_LIFECYCLE, crm("contacts")], "Contacts in the lead stage.")
mqls = stage_view(
    "mqls", [CONTACT_LIFECYCLE, crm("contacts")], "Marketing-qualified leads (CRM or engagement)."
)
sqls = stage_view("sqls", [CONTACT_LIFECYCLE, crm("contacts")], "Sales-qualified leads.")
opportunities = stage_view(
    "opportunities",
    [CONTACT_LIFECYCLE, crm("deals")],
    "Open new-business deals with their contact's stage.",
    "SELECT sum(amount) AS pipeline_value, median(days_open) AS median_days_open FROM {relation}",
)
customers = stage_view(
    "customers",
    [ACCOUNT_LIFECYCLE, crm("companies"), crm("subscriptions")],
    "Customer accounts (not churned) with their active ARR.",
    "SELECT sum(active_arr) AS active_arr FROM {relation}",
)
onboarding = sql_asset(
    ["stages", "onboarding"],
    sql_files=[
        SQL_DIR / "onboarding.sql",
        SQL_DIR / "onboarding_progress.sql",
    ],
    relation="stages.onboarding_progress",
    deps=[crm("deals"), crm("subscriptions"), crm("owners")],
    description="Handoff: every won new-business deal starts onboarding by itself, with a CSM "
    "and dated tasks; progress is activated, in_progress or overdue.",
    group_name="stages",
    summary_sql="SELECT count(*) FILTER (WHERE status = 'overdue') AS overdue, "
    "count(*) FILTER (WHERE status = 'in_progress') AS in_progress FROM {relation}",
)
adoption_health = stage_view(
    "adoption_health",
    [crm("subscriptions"), crm("tickets"), ACCOUNT_LIFECYCLE],
    "Health of every active subscription: seat use, its trend, angry tickets.",
    "SELECT count(*) FILTER (WHERE health_band = 'at_risk') AS at_risk, "
    "avg(health_score) AS mean_health_score FROM {relation}",
)
renewals = stage_view(
    "renewals",
    [dg.AssetKey(["stages", "adoption_health"])],
    "Active subscriptions inside their renewal window, with their health.",
    "SELECT sum(arr) AS arr_up_for_renewal, count(*) FILTER (WHERE at_risk) AS at_risk "
    "FROM {relation}",
)
expansion = stage_view(
    "expansion",
    [dg.AssetKey(["stages", "adoption_health"]), crm("deals")],
    "Accounts ready to grow: seats nearly all used, or an expansion deal open.",
)
waiting_references = stage_view(
    "waiting_references",
    [crm(table) for table in CURRENT_STATE_TABLES],
    "Records that name a record not received yet (a contact before its company, a deal "
    "before its owner), with the missing id and since when they wait. Events may arrive in "
    "any order: these wait instead of failing the run, and leave when the record arrives.",
    "SELECT count(DISTINCT (record_type, record_id)) AS records_waiting, "
    "count(*) FILTER (WHERE missing_type = 'company') AS \"waiting_for/company\", "
    "count(*) FILTER (WHERE missing_type = 'contact') AS \"waiting_for/contact\", "
    "count(*) FILTER (WHERE missing_type = 'deal') AS \"waiting_for/deal\", "
    "count(*) FILTER (WHERE missing_type = 'owner') AS \"waiting_for/owner\", "
    "round(max(epoch(now() - waiting_since)) / 3600, 2) AS longest_wait_hours FROM {relation}",
)

stage_assets = [
    waiting_references,
    contact_lifecycle,
    account_lifecycle,
    leads,
    mqls,
    sqls,
    opportunities,
    customers,
    onboarding,
    adoption_health,
    renewals,
    expansion,
]
