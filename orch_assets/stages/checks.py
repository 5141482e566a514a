"""Data-quality checks on every stage and handoff asset: Great Expectations suites run as
Dagster asset checks (docs/data_quality.md).

Each check declares one suite of Great Expectations expectations; revorch.quality runs it as
DuckDB SQL on the table, so no table is copied into pandas (one aggregate pass per check). Checks
with severity ERROR guard what later assets read (keys, allowed moves, stage values, clocks, a
row's own record) and are blocking: when one fails, the assets after its asset are skipped in
that run. They fail only on corruption. A reference to another record (a contact's company, a
deal's owner) is not checked here: events arrive in any order, so a record not received yet
may still come; it waits in stages.waiting_references, which a WARN check reports. Checks with
severity WARN (freshness, waiting references, values a person typed into the CRM) only report.

The row-level checks of the state machines' tables (a million contacts, two million moves)
check the changed slice: the rows of the entities the state machine recomputed since the check
last passed (``ChangedSlice``), so a run checks what changed, not the store. The whole table is
checked on the first run, when the suite changed (its config) and on request (``full_check``).
A failing check keeps its watermark, so its rows are checked again until they pass.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import duckdb

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from orch_assets.stages.assets import ACCOUNT_LIFECYCLE, CONTACT_LIFECYCLE
from resources import LifecycleConfigResource, StateStore
from revorch.lifecycle.config import NEW, LifecycleConfig, StateMachine
from revorch.lifecycle.keyed_tables import sql_hash, store_hash, stored_hash
from revorch.lifecycle.runner import REFRESHES_SQL
from revorch.quality.expectations import (
    Expectation,
    Suite,
    between,
    expect,
    has_columns,
    is_key,
    not_before,
    not_in_future,
    one_of,
    refers_to,
    validate,
)

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN

# Contacts arrive and move every day in a live CRM: a week without a single move while the
# change log keeps growing means the state machine has stopped moving anyone.
CONTACT_MOVES_WITHIN_DAYS = 7


def stage(name: str) -> dg.AssetKey:
    return dg.AssetKey(["stages", name])


def handoff(name: str) -> dg.AssetKey:
    return dg.AssetKey(["handoffs", name])


def allowed_moves(machine: StateMachine) -> Expectation:
    """The ``move`` column ('from -> to') is a move config/lifecycle.yaml allows ('new' is the
    stage before the first)."""
    moves = [
        f"{source} -> {target}"
        for source, targets in machine.transitions.items()
        for target in targets
    ]
    return expect(
        "ExpectColumnValuesToBeInSet",
        column="move",
        value_set=moves,
        description="from_stage -> to_stage is an allowed move",
    )


# --- Declaring and running the checks ---------------------------------------------------------


@dataclass(frozen=True)
class ChangedSlice:
    """Check only the rows whose ``key`` column names an entity ``refreshed`` (a name in
    stages.keyed_refreshes, e.g. ``stages/contact_lifecycle``) recomputed since the check last
    passed. Sound for row-level expectations and keys that include ``key``: a row changes only
    when its entity is recomputed, and every row of an entity is rewritten together."""

    refreshed: str
    key: str


@dataclass(frozen=True)
class DeclaredCheck:
    """One check of one asset: its name, severity, the suite it validates and, for a check of
    the changed slice, which slice."""

    asset: dg.AssetKey
    name: str
    description: str | None
    severity: dg.AssetCheckSeverity
    declare: Callable[[LifecycleConfig], Suite]
    changed_slice: ChangedSlice | None = None

    @property
    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            self.name,
            asset=self.asset,
            description=self.description,
            blocking=self.severity == ERROR,
        )


def stage_check(
    asset: dg.AssetKey,
    *,
    severity: dg.AssetCheckSeverity,
    name: str | None = None,
    description: str | None = None,
    changed_slice: ChangedSlice | None = None,
):
    """Declare a check of ``asset`` from a function that builds its suite from the lifecycle
    config. The function's name names the check and its docstring describes it, unless
    ``name`` and ``description`` say otherwise. ERROR checks are blocking, WARN checks are not.
    """

    def decorate(declare: Callable[[LifecycleConfig], Suite]) -> DeclaredCheck:
        return DeclaredCheck(
            asset,
            name or declare.__name__,
            description or inspect.getdoc(declare),
            severity,
            declare,
            changed_slice,
        )

    return decorate


class CheckConfig(dg.Config):
    """Set full_check to check every row, not only the changed slice (``ChangedSlice``)."""

    full_check: bool = False


def _suite_version(suite: Suite) -> str:
    """What the suite checks, without the wall clock that ``not_in_future`` reads (a bound that
    only moves later: rows that passed it pass it again)."""
    declared = [
        e for item in suite.expectations for e in (item if isinstance(item, list) else [item])
    ]
    return sql_hash(
        suite.sql,
        repr(sorted(suite.parameters.items())),
        *(
            repr(e)
            if not isinstance(e, Expectation)
            else repr(
                (
                    e.kind,
                    e.description,
                    {k: v for k, v in e.arguments.items() if not isinstance(v, datetime)},
                )
            )
            for e in declared
        ),
    )


def _sliced(
    conn: duckdb.DuckDBPyConnection, check: DeclaredCheck, suite: Suite, full: bool
) -> tuple[Suite, dict[str, object], tuple | None]:
    """The suite to validate (the changed slice, or every row), what to report about it, and
    the watermark to keep if it passes (None: nothing to keep)."""
    changed = check.changed_slice
    if changed is None:
        return suite, {}, None
    name, version = f"checks/{check.name}", _suite_version(suite)
    seen = conn.execute(
        "SELECT load_id, as_of FROM state_watermarks WHERE name = ?", [changed.refreshed]
    ).fetchone()
    last = conn.execute(
        "SELECT load_id, as_of FROM state_watermarks WHERE name = ?", [name]
    ).fetchone()
    keep = (name, version, seen)
    if full or last is None or stored_hash(conn, name) != version:
        return suite, {"checked": dg.MetadataValue.text("all rows")}, keep
    conn.execute(REFRESHES_SQL)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE check_slice AS SELECT DISTINCT key "
        "FROM stages.keyed_refreshes WHERE table_name = $refreshed "
        "AND (load_id > $since OR as_of > $since_as_of)",
        {"refreshed": changed.refreshed, "since": last[0], "since_as_of": last[1]},
    )
    sliced = Suite(
        f"SELECT * FROM ({suite.sql}) WHERE {changed.key} IN (SELECT key FROM check_slice)",
        suite.expectations,
        suite.sample_columns,
        suite.parameters,
    )
    return sliced, {"checked": dg.MetadataValue.text("changed slice")}, keep


def _keep(conn: duckdb.DuckDBPyConnection, keep: tuple) -> None:
    """Remember what a passing check of a changed slice has seen."""
    name, version, seen = keep
    load_id, as_of = seen or (0, None)
    conn.execute("DELETE FROM state_watermarks WHERE name = ?", [name])
    conn.execute(
        "INSERT INTO state_watermarks (name, load_id, updated_at, as_of) VALUES (?, ?, now(), ?)",
        [name, load_id, as_of],
    )
    store_hash(conn, name, version)


def checks_of(asset: dg.AssetKey, declared: list[DeclaredCheck]) -> dg.AssetChecksDefinition:
    """Every check of one asset as one Dagster step: one connection, one pass, a result each
    (a step per check would cost Dagster's per-step overhead 23 times a run)."""

    @dg.multi_asset_check(
        name=f"{asset.to_python_identifier()}_quality",
        specs=[check.spec for check in declared],
        pool=DUCKDB_WRITER_POOL,
    )
    def _checks(config: CheckConfig, state_store: StateStore, lifecycle: LifecycleConfigResource):
        lifecycle_config = lifecycle.load()
        with state_store.get_connection() as conn:
            for check in declared:
                suite, reported, keep = _sliced(
                    conn, check, check.declare(lifecycle_config), config.full_check
                )
                result = check_result(
                    conn, suite, severity=check.severity, check=check.spec, reported=reported
                )
                if result.passed and keep:
                    _keep(conn, keep)
                yield result

    return _checks


def by_asset(declared: list[DeclaredCheck]) -> list[dg.AssetChecksDefinition]:
    assets = list(dict.fromkeys(check.asset for check in declared))
    return [checks_of(a, [c for c in declared if c.asset == a]) for a in assets]


def check_result(
    conn: duckdb.DuckDBPyConnection,
    suite: Suite,
    *,
    severity: dg.AssetCheckSeverity,
    check: dg.AssetCheckSpec | None = None,
    reported: dict[str, object] | None = None,
) -> dg.AssetCheckResult:
    """Validate the suite (revorch.quality) and report it as the check's result: rows checked,
    failing rows per expectation, the results and a sample of failing rows as markdown (and
    what ``reported`` adds)."""
    validation = validate(conn, suite)
    metadata: dict[str, object] = {
        **(reported or {}),
        "rows_checked": validation.rows_checked,
        "expectations": len(validation.failing),
        "failed_expectations": len(validation.failed),
        **{f"failing/{label}": count for label, count in validation.failing.items()},
        "results": dg.MetadataValue.md(validation.results_table),
    }
    if validation.failing_rows:
        metadata["failing_rows"] = dg.MetadataValue.md(validation.failing_rows)
    return dg.AssetCheckResult(
        asset_key=check.asset_key if check else None,
        check_name=check.name if check else None,
        passed=validation.passed,
        severity=severity,
        metadata=metadata,
        description=f"failed: {'; '.join(validation.failed)}" if validation.failed else None,
    )


# --- The lifecycle state machines: every other stage reads them -----------------------------

FRESHNESS_SQL = """
WITH clock AS (
    SELECT (SELECT max(load_id) FROM change_log) AS newest_load_id,
           data_clock() AS data_clock,
           (SELECT max(transitioned_at) FROM stages.stage_transitions
            WHERE entity_type = $entity_type) AS newest_move
)
SELECT w.load_id AS load_id_seen, c.newest_load_id, w.as_of AS ran_at_clock, c.data_clock,
       c.newest_move, date_diff('hour', c.newest_move, c.data_clock) / 24 AS days_since_newest_move
FROM state_watermarks AS w, clock AS c WHERE w.name = $watermark
"""


def lifecycle_checks(
    asset: dg.AssetKey,
    *,
    noun: str,
    entity_type: str,
    table: str | None,
    machine: Callable[[LifecycleConfig], StateMachine],
    moves_within_days: float | None,
) -> list[DeclaredCheck]:
    """Three checks of one state machine's tables: its current stages, its moves (both
    blocking, on the changed slice) and its freshness (a warning). ``table`` holds the
    entities' own records when every entity must have one (contacts); None when the record may
    not have arrived."""
    rows = {"entity_type": entity_type}
    own_record = [refers_to("entity_id", table)] if table else []
    exists_in = f" and exists in {table}" if table else ""
    changed = ChangedSlice("/".join(asset.path), "entity_id")  # its state_watermarks name

    @stage_check(
        asset,
        severity=ERROR,
        changed_slice=changed,
        name=f"{noun}_stages_are_valid",
        description=f"Every {noun} has one current stage, a configured one{exists_in}; no "
        "stage was entered in the future.",
    )
    def stages_are_valid(config):
        return Suite(
            "SELECT * FROM stages.entity_stages WHERE entity_type = $entity_type",
            [
                has_columns("entity_id", "stage", "entered_at", "decided_by", "rule"),
                is_key("entity_id"),
                one_of("stage", machine(config).stages),
                one_of("decided_by", ["rule", "human", "agent"]),
                *own_record,
                not_in_future("entered_at"),
            ],
            sample_columns=["entity_id"],
            parameters=rows,
        )

    @stage_check(
        asset,
        severity=ERROR,
        changed_slice=changed,
        name=f"{noun}_transitions_are_allowed",
        description=f"Every recorded move of a {noun} is allowed by config/lifecycle.yaml, "
        f"only its first move starts from '{NEW}', moves are numbered once{exists_in}, and no "
        "move is dated in the future.",
    )
    def transitions_are_allowed(config):
        return Suite(
            "SELECT *, from_stage || ' -> ' || to_stage AS move, seq = 1 AS first_move, "
            "from_stage = $new AS from_new "
            "FROM stages.stage_transitions WHERE entity_type = $entity_type",
            [
                has_columns("entity_id", "seq", "from_stage", "to_stage", "transitioned_at"),
                is_key("entity_id", "seq"),
                between("seq", 1),
                allowed_moves(machine(config)),
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    column_A="first_move",
                    column_B="from_new",
                    description=f"only the first move starts from '{NEW}'",
                ),
                *own_record,
                not_in_future("transitioned_at"),
            ],
            sample_columns=["entity_id", "seq"],
            parameters=rows | {"new": NEW},
        )

    recent = f"; its newest move is at most {moves_within_days} days older than the data clock"

    @stage_check(
        asset,
        severity=WARN,
        name=f"{noun}_lifecycle_is_fresh",
        description=f"The {noun} state machine has seen every change loaded and ran at "
        f"a clock no earlier than the newest change received (the data clock)"
        f"{recent if moves_within_days else ''}.",
    )
    def lifecycle_is_fresh(config):
        return Suite(
            FRESHNESS_SQL,
            [
                expect("ExpectTableRowCountToEqual", value=1, description="the state machine ran"),
                expect(
                    "ExpectColumnPairValuesToBeEqual",
                    column_A="load_id_seen",
                    column_B="newest_load_id",
                    description="every loaded change was seen",
                ),
                expect(
                    "ExpectColumnPairValuesAToBeGreaterThanB",
                    column_A="ran_at_clock",
                    column_B="data_clock",
                    or_equal=True,
                    description="ran at a clock no earlier than the newest change",
                ),
                *(
                    [between("days_since_newest_move", 0, moves_within_days)]
                    if moves_within_days
                    else []
                ),
            ],
            sample_columns=["data_clock", "newest_move"],
            parameters=rows | {"watermark": "/".join(asset.path)},
        )

    return [stages_are_valid, transitions_are_allowed, lifecycle_is_fresh]


contact_lifecycle_checks = lifecycle_checks(
    CONTACT_LIFECYCLE,
    noun="contact",
    entity_type="contact",
    table="contacts",
    machine=lambda config: config.contacts,
    moves_within_days=CONTACT_MOVES_WITHIN_DAYS,
)
# A customer account moves a few times a year (start, activation, renewal window, renewal):
# weeks without any account move are normal, so only the state machine's clock is checked.
# An account is known by its subscriptions; its company record may arrive later, or never
# (a CRM without companies), so it is not required.
account_lifecycle_checks = lifecycle_checks(
    ACCOUNT_LIFECYCLE,
    noun="account",
    entity_type="company",
    table=None,
    machine=lambda config: config.accounts,
    moves_within_days=None,
)


# --- Contacts in a stage: what the lead-qualification agent reads ---------------------------


def contacts_in_stage_check(name: str) -> DeclaredCheck:
    @stage_check(
        stage(name),
        severity=ERROR,
        name=f"{name}_are_unique_known_contacts",
        description=f"Each contact of stages/{name} appears once and exists in contacts; it "
        "did not enter the stage in the future.",
    )
    def check(config):
        return Suite(
            f"SELECT * FROM stages.{name}",
            [
                has_columns("contact_id", "company_id", "owner_id", "entered_at", "days_in_stage"),
                is_key("contact_id"),
                refers_to("contact_id", "contacts"),
                not_in_future("entered_at"),
                between("days_in_stage", 0),
            ],
            sample_columns=["contact_id"],
        )

    return check


leads_check, mqls_check, sqls_check = (
    contacts_in_stage_check(name) for name in ("leads", "mqls", "sqls")
)


# --- Deals, customers, onboarding, health, renewals, expansion --------------------------------


@stage_check(stage("opportunities"), severity=ERROR)
def opportunities_are_unique_known_deals(config):
    """Each open deal appears once and exists in deals; its contact's stage is a configured
    one; it was not created in the future."""
    return Suite(
        "SELECT * FROM stages.opportunities",
        [
            has_columns("deal_id", "company_id", "contact_id", "owner_id", "amount", "days_open"),
            is_key("deal_id"),
            refers_to("deal_id", "deals"),
            one_of("contact_stage", config.contacts.stages),
            not_in_future("created_at"),
            between("days_open", 0),
        ],
        sample_columns=["deal_id"],
    )


@stage_check(stage("opportunities"), severity=WARN)
def opportunity_amounts_are_plausible(config):
    """Deal amounts, typed into the CRM by people, are not negative."""
    return Suite(
        "SELECT deal_id, amount FROM stages.opportunities",
        [between("amount", 0)],
        sample_columns=["deal_id"],
    )


@stage_check(stage("customers"), severity=ERROR)
def customers_are_unique_known_accounts(config):
    """Each customer account appears once, exists in companies, and is in a configured
    account stage other than churned."""
    live_stages = [s for s in config.accounts.stages if s != "churned"]
    return Suite(
        "SELECT * FROM stages.customers",
        [
            has_columns("company_id", "owner_id", "account_stage", "active_arr"),
            is_key("company_id"),
            refers_to("company_id", "companies"),
            one_of("account_stage", live_stages),
            between("active_subscriptions", 0),
            not_in_future("stage_entered_at"),
        ],
        sample_columns=["company_id"],
    )


@stage_check(stage("customers"), severity=WARN)
def customer_arr_is_plausible(config):
    """Active ARR, summed from the CRM's subscriptions, is not negative."""
    return Suite(
        "SELECT company_id, active_arr FROM stages.customers",
        [between("active_arr", 0)],
        sample_columns=["company_id"],
    )


@stage_check(stage("onboarding"), severity=ERROR)
def onboarding_is_one_per_won_deal(config):
    """One onboarding per won deal, and the deal exists; its CSM exists; it did not start or
    end in the future and is due after it started; its status is a known one."""
    return Suite(
        "SELECT * FROM stages.onboarding_progress",
        [
            has_columns("onboarding_id", "deal_id", "company_id", "owner_id", "started_at"),
            is_key("onboarding_id"),
            is_key("deal_id"),
            refers_to("deal_id", "deals"),
            refers_to("owner_id", "owners"),
            not_in_future("started_at"),
            not_in_future("activated_at"),
            not_before("due_at", "started_at"),
            one_of("status", ["activated", "in_progress", "overdue"]),
        ],
        sample_columns=["onboarding_id"],
    )


@stage_check(stage("adoption_health"), severity=ERROR)
def adoption_health_is_one_row_per_subscription(config):
    """One row per active subscription, which exists; the health score is between 0 and 100
    and its band a known one; ticket counts are not negative."""
    return Suite(
        "SELECT * FROM stages.adoption_health",
        [
            has_columns("subscription_id", "company_id", "utilization", "health_score"),
            is_key("subscription_id"),
            refers_to("subscription_id", "subscriptions"),
            between("health_score", 0, 100),
            one_of("health_band", ["healthy", "watch", "at_risk"]),
            between("open_tickets", 0),
            between("angry_tickets", 0),
        ],
        sample_columns=["subscription_id", "company_id"],
    )


@stage_check(stage("adoption_health"), severity=WARN)
def seat_use_is_plausible(config):
    """Seat use, from the CRM, is between none and every seat bought (above means the seat
    count is out of date, or overage to sell); ARR is not negative; usage cannot fall by more
    than all of it."""
    return Suite(
        "SELECT subscription_id, utilization, usage_change, arr FROM stages.adoption_health",
        [between("utilization", 0, 1), between("usage_change", -1), between("arr", 0)],
        sample_columns=["subscription_id"],
    )


@stage_check(stage("renewals"), severity=ERROR)
def renewals_are_unique_subscriptions_in_window(config):
    """Each renewal is one existing subscription, inside the renewal window of
    config/lifecycle.yaml, with a health score between 0 and 100."""
    window = config.accounts.renewal_window_days
    return Suite(
        "SELECT * FROM stages.renewals",
        [
            has_columns("subscription_id", "company_id", "days_to_renewal", "at_risk"),
            is_key("subscription_id"),
            refers_to("subscription_id", "subscriptions"),
            between("days_to_renewal", high=window),
            between("health_score", 0, 100),
        ],
        sample_columns=["subscription_id"],
    )


@stage_check(stage("renewals"), severity=WARN)
def renewals_are_not_overdue(config):
    """No active subscription is past its end date (a renewal nobody closed), and ARR is not
    negative."""
    return Suite(
        "SELECT subscription_id, days_to_renewal, arr FROM stages.renewals",
        [between("days_to_renewal", 0), between("arr", 0)],
        sample_columns=["subscription_id"],
    )


@stage_check(stage("expansion"), severity=ERROR)
def expansion_signals_are_unique_and_known(config):
    """Each subscription and open expansion deal pair appears once; the subscription and the
    deal exist; the signal is a known one."""
    return Suite(
        "SELECT * FROM stages.expansion",
        [
            has_columns("company_id", "subscription_id", "open_expansion_deal_id", "signal"),
            expect(
                "ExpectColumnValuesToNotBeNull",
                column="subscription_id",
                description="subscription_id is set",
            ),
            expect(
                "ExpectCompoundColumnsToBeUnique",
                column_list=["subscription_id", "open_expansion_deal_id"],
                description="(subscription_id, open_expansion_deal_id) is unique",
            ),
            refers_to("subscription_id", "subscriptions"),
            refers_to("open_expansion_deal_id", "deals"),
            one_of("signal", ["open_expansion_deal", "seat_utilization"]),
        ],
        sample_columns=["subscription_id", "open_expansion_deal_id"],
    )


@stage_check(stage("expansion"), severity=WARN)
def expansion_amounts_are_plausible(config):
    """Expansion deal amounts are not negative and seat use is between none and every seat."""
    return Suite(
        "SELECT subscription_id, open_expansion_deal_id, expansion_amount, utilization "
        "FROM stages.expansion",
        [between("expansion_amount", 0), between("utilization", 0, 1)],
        sample_columns=["subscription_id", "open_expansion_deal_id"],
    )


# --- Handoffs: what the follow-up, SLA and renewal-risk paths act on ---------------------------


@stage_check(handoff("follow_up_cadence"), severity=ERROR)
def follow_ups_are_unique_known_contacts(config):
    """Each accelerated contact appears once and exists, with a configured stage and buying
    signal, a signal not in the future, and a next touch after the signal."""
    return Suite(
        "SELECT * FROM handoffs.follow_up_cadence",
        [
            has_columns("contact_id", "stage", "owner_id", "signal", "signal_at"),
            is_key("contact_id"),
            refers_to("contact_id", "contacts"),
            one_of("stage", config.contacts.stages),
            one_of("signal", config.engagement.buying_signals),
            between("signals", 1),
            not_in_future("signal_at"),
            not_before("next_touch_due_at", "signal_at"),
        ],
        sample_columns=["contact_id"],
    )


@stage_check(handoff("sla_escalations"), severity=ERROR)
def sla_entries_are_unique_known_contacts(config):
    """Each SLA entry is one existing contact in a stage with an SLA; the manager it escalates
    to exists; its status is a known one; nothing happened in the future."""
    return Suite(
        "SELECT * FROM handoffs.sla_escalations",
        [
            has_columns("contact_id", "stage", "entered_at", "due_at", "status", "escalate_to"),
            is_key("contact_id"),
            refers_to("contact_id", "contacts"),
            refers_to("escalate_to", "owners"),
            one_of("stage", list(config.handoffs.sla.first_touch_hours)),
            one_of("status", ["met", "late", "breached", "pending"]),
            not_in_future("entered_at"),
            not_in_future("first_touch_at"),
            not_before("due_at", "entered_at"),
        ],
        sample_columns=["contact_id"],
    )


@stage_check(handoff("renewal_risk"), severity=ERROR)
def renewal_risks_are_unique_known_subscriptions(config):
    """Each subscription at risk appears once and exists, with a health score between 0 and
    100."""
    return Suite(
        "SELECT * FROM handoffs.renewal_risk",
        [
            has_columns("subscription_id", "company_id", "owner_id", "reasons"),
            is_key("subscription_id"),
            refers_to("subscription_id", "subscriptions"),
            between("health_score", 0, 100),
        ],
        sample_columns=["subscription_id"],
    )


# --- Waiting references: records that name a record not received yet -------------------------


@stage_check(stage("waiting_references"), severity=WARN)
def references_are_known(config):
    """Every record names only records Revorch has received. A miss is not an error (events
    arrive in any order; the record may still come), so this only reports who waits and for
    what; a wait that never ends is a CRM export without that object, or a deleted record."""
    return Suite(
        "SELECT * FROM stages.waiting_references",
        # Row-wise, so each waiting record is counted and sampled in the check's metadata.
        [expect("ExpectColumnValuesToBeNull", column="missing_id", description="no record waits")],
        sample_columns=["record_type", "record_id", "reference", "missing_id"],
    )


stage_checks = by_asset(
    [
        *contact_lifecycle_checks,
        *account_lifecycle_checks,
        leads_check,
        mqls_check,
        sqls_check,
        opportunities_are_unique_known_deals,
        opportunity_amounts_are_plausible,
        customers_are_unique_known_accounts,
        customer_arr_is_plausible,
        onboarding_is_one_per_won_deal,
        adoption_health_is_one_row_per_subscription,
        seat_use_is_plausible,
        renewals_are_unique_subscriptions_in_window,
        renewals_are_not_overdue,
        expansion_signals_are_unique_and_known,
        expansion_amounts_are_plausible,
        follow_ups_are_unique_known_contacts,
        sla_entries_are_unique_known_contacts,
        renewal_risks_are_unique_known_subscriptions,
        references_are_known,
    ]
)
