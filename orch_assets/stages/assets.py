"""The revenue lifecycle as assets: lead -> MQL -> SQL -> opportunity -> customer ->
onboarding -> adoption/health -> renewal -> expansion.

Two assets run the state machines (contacts, accounts) incrementally; every stage asset
after them is a view or a small table over their result, with its SQL in a file beside this
module. The stages form one chain in the asset graph, each after the one before it, and each
reports its count, who entered and left, its median days in stage and its conversion to the
next stage (docs/lifecycle.md).

The assets are two subsettable multi-assets (``state_machines``, then ``stage_chain``): a run
takes the ``duckdb_writer`` slot twice for all of them, instead of once per stage between
other runs' steps (bench/README.md, "Live mode"). A blocking check on a stage of the chain
therefore stops what comes after the chain (handoffs, agents), not the rest of the chain.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb

from orch_assets.ingestion.assets import CURRENT_STATE_TABLES, DUCKDB_WRITER_POOL, RebuildConfig
from orch_assets.sql_files import render, run_sql_file
from resources import LifecycleConfigResource, StateStore
from revorch.lifecycle.config import LifecycleConfig
from revorch.lifecycle.keyed_tables import refresh_keyed_table
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


# What refreshes one asset on the writer's connection, given the lifecycle config and whether
# to rebuild from the whole change log; it returns the asset's metadata.
Refresh = Callable[[duckdb.DuckDBPyConnection, LifecycleConfig, bool], dict[str, object]]


@dataclass(frozen=True)
class Stage:
    """One asset of the ``stages`` multi-asset: its spec and what refreshes it."""

    spec: dg.AssetSpec
    refresh: Refresh


def stage_spec(key, *, deps, description) -> dg.AssetSpec:
    return dg.AssetSpec(
        key,
        deps=deps,
        description=description,
        group_name="stages",
        kinds={"duckdb"},
        automation_condition=EAGER,
    )


def lifecycle_stage(key, *, entity_type, refresh, deps, description) -> Stage:
    """A stage that runs one state machine over the entities touched since its last run."""

    def _refresh(conn, config: LifecycleConfig, full_rebuild: bool) -> dict[str, object]:
        result = refresh(conn, config, full_rebuild=full_rebuild)
        dg.get_dagster_logger().info(f"{entity_type} lifecycle: {result}")
        return {
            "entities_recomputed": result.entities,
            "transitions_written": result.transitions,
            "forbidden_moves": result.forbidden,
            **_stage_counts(conn, entity_type),
        }

    return Stage(stage_spec(key, deps=deps, description=description), _refresh)


contact_lifecycle = lifecycle_stage(
    CONTACT_LIFECYCLE,
    entity_type="contact",
    refresh=refresh_contact_lifecycle,
    deps=[crm("contacts"), crm("deals"), crm("activities")],
    description="Each contact's stage (lead, mql, sql, opportunity, customer, disqualified), "
    "every move it made and why, and the moves the state machine refused. Recomputes the "
    "contacts touched since the last run.",
)
account_lifecycle = lifecycle_stage(
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


@dataclass(frozen=True)
class StageFlow:
    """What a stage of the chain reports beside its rows: who entered and left it since its
    last materialization (today's ``members`` against those kept then, stage_flow.sql) and
    the one-row results of its ``metadata_sql`` files (count, median days in stage,
    conversion to the next stage), which may name ``parameters`` as ``$name``."""

    stage: str
    next_stage: str  # what conversion_to_next_pct converts to, shown beside it
    members: str  # a query of one column, member_id: the records in the stage now
    metadata_sql: tuple[Path, ...]
    parameters: dict[str, object]


@dataclass(frozen=True)
class KeyedStage:
    """A stage table kept up to date by key (revorch/lifecycle/keyed_tables.py): its SQL file
    gives the rows of the keys in ``scope``, ``<file>_touched.sql`` the keys whose rows may
    differ since the last run, ``all_keys`` every key (first run, changed SQL, full rebuild)."""

    file: str
    table: str
    key: str
    all_keys: str


def _metadata_row(conn, sql: str) -> dict[str, dg.MetadataValue]:
    """The one row ``sql`` returns, as metadata: integers as ints, other numbers as floats
    (the SQL rounds them), NULLs (an undefined ratio, an empty stage's median) left out."""
    cursor = conn.execute(sql)
    names = [column[0] for column in cursor.description]
    metadata: dict[str, dg.MetadataValue] = {}
    for name, value in zip(names, cursor.fetchone(), strict=True):
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            metadata[name] = dg.MetadataValue.int(value)
        else:
            metadata[name] = dg.MetadataValue.float(float(value))
    return metadata


def sql_refresh(
    *,
    sql_files: list[Path],
    relation: str,
    summary_sql: str | None = None,
    flow: StageFlow | None = None,
    keyed: KeyedStage | None = None,
) -> Refresh:
    """Runs the SQL files (views, tables, or a ``keyed`` table recomputed for the keys touched
    since the last run) and reports rows and a summary (``summary_sql``, one row) or, for a
    stage of the chain, its ``flow``. A view whose SQL has not changed is not created again."""

    def _refresh(conn, config: LifecycleConfig, full_rebuild: bool) -> dict[str, object]:
        parameters = sql_parameters(config)
        metadata: dict[str, object] = {}
        conn.execute("BEGIN TRANSACTION")
        for path in sql_files:
            if keyed and path.name == keyed.file:
                refreshed = refresh_keyed_table(
                    conn,
                    table=keyed.table,
                    key=keyed.key,
                    rows_sql=render(path.read_text(), parameters),
                    touched_sql=render(
                        path.with_name(f"{path.stem}_touched.sql").read_text(), parameters
                    ),
                    all_keys_sql=keyed.all_keys,
                    full_rebuild=full_rebuild,
                )
                metadata["keys_recomputed"] = refreshed.keys
                metadata["recomputed_because"] = refreshed.why
            else:
                run_sql_file(conn, path, parameters)
        if flow:
            # In the same transaction as the views, so a failed run keeps last time's.
            conn.execute(
                "CREATE OR REPLACE TEMP TABLE members_now AS SELECT DISTINCT "
                f"hash(member_id) AS member FROM ({flow.members}) AS m(member_id)"
            )
            conn.execute(render(STAGE_FLOW_SQL.read_text(), {"stage": flow.stage}))
        conn.execute("COMMIT")
        metadata["dagster/row_count"] = conn.execute(f"SELECT count(*) FROM {relation}").fetchone()[
            0
        ]
        if flow:
            for path in flow.metadata_sql:
                sql = render(path.read_text(), parameters | flow.parameters)
                metadata |= _metadata_row(conn, sql)
            metadata["next_stage"] = dg.MetadataValue.text(flow.next_stage)
            metadata |= _metadata_row(conn, "SELECT * FROM stage_flow")
        if summary_sql:
            metadata |= _metadata_row(conn, summary_sql.format(relation=relation))
        return metadata

    return _refresh


def sql_asset(
    key: list[str],
    *,
    deps: list[dg.AssetKey],
    description: str,
    group_name: str,
    **refresh_args,
) -> dg.AssetsDefinition:
    """An asset of its own that runs ``sql_refresh(**refresh_args)`` (the handoffs)."""
    refresh = sql_refresh(**refresh_args)

    @dg.asset(
        key=key,
        deps=deps,
        description=description,
        group_name=group_name,
        kinds={"duckdb"},
        pool=DUCKDB_WRITER_POOL,
        automation_condition=EAGER,
    )
    def _asset(config: RebuildConfig, state_store: StateStore, lifecycle: LifecycleConfigResource):
        with state_store.get_connection() as conn:
            metadata = refresh(conn, lifecycle.load(), config.full_rebuild)
        return dg.MaterializeResult(metadata=metadata)

    return _asset


# --- The chain: lead -> MQL -> SQL -> opportunity -> customer -> onboarding -> adoption ->
# renewal -> expansion. A stage's records come from the stage before it, by the state
# machines' moves (a lead becomes an MQL; a won opportunity's account a customer, who starts
# onboarding, ...), so each stage asset depends on the previous one and the lineage reads
# like the lifecycle. The state machines and the CRM tables are upstream of the chain's head
# (and of customers, where the account machine starts), hence of every stage after them.


def stage_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["stages", name])


STAGE_FLOW_SQL = SQL_DIR / "stage_flow.sql"


def chain_stage(
    name: str,
    *,
    previous: dg.AssetKey,
    next_stage: str,
    members: str,
    description: str,
    deps: tuple[dg.AssetKey, ...] = (),
    sql_files: tuple[str, ...] = (),
    relation: str | None = None,
    metadata_sql: tuple[str, ...] = (),
    parameters: dict[str, object] | None = None,
    keyed: KeyedStage | None = None,
) -> Stage:
    """A stage of the chain: its view or table (``<name>.sql``, or ``sql_files``) and, as
    run metadata, who entered and left it since its last materialization (``members``) and
    what its metadata files (``<name>_metadata.sql``, or ``metadata_sql``) report: count,
    median days in stage, conversion to the next stage in percent."""
    return Stage(
        stage_spec(stage_key(name), deps=[previous, *deps], description=description),
        sql_refresh(
            sql_files=[SQL_DIR / file for file in (sql_files or (f"{name}.sql",))],
            relation=relation or f"stages.{name}",
            flow=StageFlow(
                name,
                next_stage,
                members,
                tuple(SQL_DIR / file for file in (metadata_sql or (f"{name}_metadata.sql",))),
                parameters or {},
            ),
            keyed=keyed,
        ),
    )


def contact_stage(name: str, stage: str, next_stage: str, previous, description: str, **kwargs):
    """leads, mqls, sqls: contacts in one stage of the contact state machine."""
    return chain_stage(
        name,
        previous=previous,
        next_stage=next_stage,
        members=f"SELECT contact_id FROM stages.{name}",
        description=description,
        metadata_sql=("contacts_in_stage_metadata.sql", "contact_conversion.sql"),
        parameters={"stage": stage, "next_stage": next_stage},
        **kwargs,
    )


# The head of the chain also counts the contact funnel (stages.contact_funnel), once per run,
# for the conversions of every contact stage after it.
leads = contact_stage(
    "leads",
    "lead",
    "mql",
    CONTACT_LIFECYCLE,
    "Contacts in the lead stage; and stages.contact_funnel, how many contacts reached each "
    "funnel stage.",
    sql_files=("leads.sql", "contact_funnel.sql"),
)
mqls = contact_stage(
    "mqls", "mql", "sql", stage_key("leads"), "Marketing-qualified leads (CRM or engagement)."
)
sqls = contact_stage("sqls", "sql", "opportunity", stage_key("mqls"), "Sales-qualified leads.")
opportunities = chain_stage(
    "opportunities",
    next_stage="customer",
    previous=stage_key("sqls"),
    members="SELECT deal_id FROM stages.opportunities",
    description="Open new-business deals with their contact's stage.",
    metadata_sql=("opportunities_metadata.sql", "contact_conversion.sql"),
    parameters={"stage": "opportunity", "next_stage": "customer"},
)
customers = chain_stage(
    "customers",
    next_stage="onboarding",
    previous=stage_key("opportunities"),
    deps=(ACCOUNT_LIFECYCLE,),
    members="SELECT company_id FROM stages.customers",
    description="Customer accounts (not churned) with their active ARR.",
)
onboarding = chain_stage(
    "onboarding",
    next_stage="adoption (activated)",
    previous=stage_key("customers"),
    deps=(crm("owners"),),
    sql_files=("onboarding.sql", "onboarding_progress.sql"),
    relation="stages.onboarding_progress",
    keyed=KeyedStage("onboarding.sql", "stages.onboarding", "deal_id", "SELECT id FROM deals"),
    members="SELECT onboarding_id FROM stages.onboarding_progress WHERE status <> 'activated'",
    description="Handoff: every won new-business deal starts onboarding by itself, with a CSM "
    "and dated tasks; progress is activated, in_progress or overdue.",
)
adoption_health = chain_stage(
    "adoption_health",
    next_stage="renewal",
    previous=stage_key("onboarding"),
    deps=(crm("tickets"),),
    keyed=KeyedStage(
        "adoption_health.sql",
        "stages.adoption_health",
        "subscription_id",
        "SELECT id FROM subscriptions",
    ),
    members="SELECT subscription_id FROM stages.adoption_health",
    description="Health of every active subscription: seat use, its trend, angry tickets.",
)
renewals = chain_stage(
    "renewals",
    next_stage="renewed",
    previous=stage_key("adoption_health"),
    members="SELECT subscription_id FROM stages.renewals",
    description="Active subscriptions inside their renewal window, with their health.",
)
expansion = chain_stage(
    "expansion",
    next_stage="expanded (expansion deal won)",
    previous=stage_key("renewals"),
    members="SELECT subscription_id || '/' || coalesce(open_expansion_deal_id, '') "
    "FROM stages.expansion",
    description="Accounts ready to grow: seats nearly all used, or an expansion deal open.",
)
waiting_references = Stage(
    stage_spec(
        stage_key("waiting_references"),
        deps=[crm(table) for table in CURRENT_STATE_TABLES],
        description="Records that name a record not received yet (a contact before its company, "
        "a deal before its owner), with the missing id and since when they wait. Events may "
        "arrive in any order: these wait instead of failing the run, and leave when the record "
        "arrives.",
    ),
    sql_refresh(
        sql_files=[SQL_DIR / "waiting_references.sql"],
        relation="stages.waiting_references",
        keyed=KeyedStage(
            "waiting_references.sql",
            "stages.waiting_references",
            "(record_type || ':' || record_id)",
            " UNION ALL ".join(
                f"SELECT '{record}:' || id FROM {table}"
                for record, table in (
                    ("contact", "contacts"),
                    ("company", "companies"),
                    ("deal", "deals"),
                    ("activity", "activities"),
                    ("ticket", "tickets"),
                    ("subscription", "subscriptions"),
                )
            ),
        ),
        summary_sql="SELECT count(DISTINCT (record_type, record_id)) AS records_waiting, "
        "count(*) FILTER (WHERE missing_type = 'company') AS \"waiting_for/company\", "
        "count(*) FILTER (WHERE missing_type = 'contact') AS \"waiting_for/contact\", "
        "count(*) FILTER (WHERE missing_type = 'deal') AS \"waiting_for/deal\", "
        "count(*) FILTER (WHERE missing_type = 'owner') AS \"waiting_for/owner\", "
        "round(max(epoch(now() - waiting_since)) / 3600, 2) AS longest_wait_hours FROM {relation}",
    ),
)

# The chain in lifecycle order.
CHAIN = [
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


def stages_asset(name: str, stages: list[Stage], description: str) -> dg.AssetsDefinition:
    """``stages`` as one subsettable multi-asset: a run refreshes the ones it selects, in this
    order, on one connection, and reports each as materialized as soon as it is done."""

    @dg.multi_asset(
        name=name,
        specs=[stage.spec for stage in stages],
        can_subset=True,
        pool=DUCKDB_WRITER_POOL,
        description=description,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: RebuildConfig,
        state_store: StateStore,
        lifecycle: LifecycleConfigResource,
    ):
        selected = context.selected_asset_keys
        lifecycle_config = lifecycle.load()
        with state_store.get_connection() as conn:
            for stage in stages:
                if stage.spec.key in selected:
                    metadata = stage.refresh(conn, lifecycle_config, config.full_rebuild)
                    yield dg.MaterializeResult(asset_key=stage.spec.key, metadata=metadata)

    return _asset


# Two steps: the state machines, whose blocking checks (orch_assets/stages/checks.py) guard
# every stage after them, then the chain and what waits for a reference.
state_machines = stages_asset(
    "state_machines",
    [contact_lifecycle, account_lifecycle],
    "The contact and account state machines, over what changed since their last run.",
)
stage_chain = stages_asset(
    "stage_chain",
    [waiting_references, *CHAIN],
    "Every stage of the chain, lead to expansion, and the records waiting for a reference.",
)
stage_assets = [state_machines, stage_chain]
