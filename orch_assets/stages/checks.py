"""Data-quality checks on every stage and handoff asset: Great Expectations suites run as
Dagster asset checks (docs/data_quality.md).

Each check reads its table from DuckDB into pandas and validates it with one suite. Checks
with severity ERROR guard what later assets read (keys, allowed moves, stage values, clocks, a
row's own record) and are blocking: when one fails, the assets after its asset are skipped in
that run. They fail only on corruption. A reference to another record (a contact's company, a
deal's owner) is not checked here: events arrive in any order, so a record not received yet
may still come; it waits in stages.waiting_references, which a WARN check reports. Checks with
severity WARN (freshness, waiting references, values a person typed into the CRM) only report.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from orch_assets.stages.assets import ACCOUNT_LIFECYCLE, CONTACT_LIFECYCLE
from resources import LifecycleConfigResource, StateStore
from revorch.lifecycle.config import NEW, LifecycleConfig, StateMachine

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN

# The ingestion quarantines changes dated more than a day ahead of the wall clock; a later
# timestamp in a stage table can only come from corruption.
FUTURE_TOLERANCE = timedelta(days=1)
# Contacts arrive and move every day in a live CRM: a week without a single move while the
# change log keeps growing means the state machine has stopped moving anyone.
CONTACT_MOVES_WITHIN_DAYS = 7
SAMPLE_ROWS = 10
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}


def stage(name: str) -> dg.AssetKey:
    return dg.AssetKey(["stages", name])


def handoff(name: str) -> dg.AssetKey:
    return dg.AssetKey(["handoffs", name])


# --- The vocabulary the checks are declared in -----------------------------------------------


def has_columns(*columns: str) -> gxe.Expectation:
    return gxe.ExpectTableColumnsToMatchSet(
        column_set=list(columns), exact_match=False, description="has its columns"
    )


def is_key(*columns: str) -> list[gxe.Expectation]:
    """Every column of the key is set, and no two rows share the key."""
    named = ", ".join(columns)
    unique = (
        gxe.ExpectColumnValuesToBeUnique(column=columns[0], description=f"{named} is unique")
        if len(columns) == 1
        else gxe.ExpectCompoundColumnsToBeUnique(
            column_list=list(columns), description=f"({named}) is unique"
        )
    )
    not_null = [
        gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} is set")
        for column in columns
    ]
    return [*not_null, unique]


def one_of(column: str, values: Sequence[object]) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeInSet(
        column=column, value_set=list(values), description=f"{column} is one of {list(values)}"
    )


@dataclass(frozen=True)
class Reference:
    """Every value of a column (nulls aside) is the id of a row of another table. DuckDB
    answers it while reading the rows (a semi-join), so no list of ids goes into the suite."""

    column: str
    table: str

    @property
    def flag(self) -> str:
        return f"{self.column}_in_{self.table}"

    def expectation(self) -> gxe.Expectation:
        return gxe.ExpectColumnValuesToBeInSet(
            column=self.flag, value_set=[True], description=f"{self.column} exists in {self.table}"
        )


def refers_to(column: str, table: str) -> Reference:
    return Reference(column, table)


def between(column: str, low: float | None = None, high: float | None = None) -> gxe.Expectation:
    if high is None:
        description = f"{column} is at least {low}"
    elif low is None:
        description = f"{column} is at most {high}"
    else:
        description = f"{column} is between {low} and {high}"
    return gxe.ExpectColumnValuesToBeBetween(
        column=column, min_value=low, max_value=high, description=description
    )


def not_in_future(column: str) -> gxe.Expectation:
    """Not after the wall clock (with the ingestion's tolerance), whatever the data clock says."""
    return gxe.ExpectColumnValuesToBeBetween(
        column=column,
        max_value=datetime.now(UTC) + FUTURE_TOLERANCE,
        description=f"{column} is not in the future",
    )


def not_before(later: str, earlier: str) -> gxe.Expectation:
    return gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A=later,
        column_B=earlier,
        or_equal=True,
        ignore_row_if="either_value_is_missing",
        description=f"{later} >= {earlier}",
    )


def allowed_moves(machine: StateMachine) -> gxe.Expectation:
    """The ``move`` column ('from -> to') is a move config/lifecycle.yaml allows ('new' is the
    stage before the first)."""
    moves = [
        f"{source} -> {target}"
        for source, targets in machine.transitions.items()
        for target in targets
    ]
    return gxe.ExpectColumnValuesToBeInSet(
        column="move", value_set=moves, description="from_stage -> to_stage is an allowed move"
    )


# --- Running a suite --------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """What one check validates: the rows a query returns, and the expectations on them.

    ``sample_columns`` identify a failing row in the results (ids, never names or emails).
    """

    sql: str
    expectations: list[gxe.Expectation | Reference | list[gxe.Expectation]]
    sample_columns: list[str]
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DeclaredCheck:
    """One check of one asset: its name, severity and the suite it validates."""

    asset: dg.AssetKey
    name: str
    description: str | None
    severity: dg.AssetCheckSeverity
    declare: Callable[[LifecycleConfig], Suite]

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
        )

    return decorate


def checks_of(asset: dg.AssetKey, declared: list[DeclaredCheck]) -> dg.AssetChecksDefinition:
    """Every check of one asset as one Dagster step: one connection, one pass, a result each
    (a step per check would cost Dagster's per-step overhead 23 times a run)."""

    @dg.multi_asset_check(
        name=f"{asset.to_python_identifier()}_quality",
        specs=[check.spec for check in declared],
        pool=DUCKDB_WRITER_POOL,
    )
    def _checks(state_store: StateStore, lifecycle: LifecycleConfigResource):
        config = lifecycle.load()
        with state_store.get_connection() as conn:
            for check in declared:
                yield validate(
                    conn, check.declare(config), severity=check.severity, check=check.spec
                )

    return _checks


def by_asset(declared: list[DeclaredCheck]) -> list[dg.AssetChecksDefinition]:
    assets = list(dict.fromkeys(check.asset for check in declared))
    return [checks_of(a, [c for c in declared if c.asset == a]) for a in assets]


def validate(
    conn: duckdb.DuckDBPyConnection,
    suite: Suite,
    *,
    severity: dg.AssetCheckSeverity,
    check: dg.AssetCheckSpec | None = None,
) -> dg.AssetCheckResult:
    """Read the suite's rows, run its expectations on them, and report: rows checked, failing
    rows per expectation, and up to ``SAMPLE_ROWS`` failing rows."""
    declared = [
        e for item in suite.expectations for e in (item if isinstance(item, list) else [item])
    ]
    references = [e for e in declared if isinstance(e, Reference)]
    sql = suite.sql
    if references:
        # A null reference is no reference: its flag stays null, which GX skips. (`NULL IN
        # (SELECT id FROM t)` is false, not null, when t is empty: a CRM without owners.)
        flags = ", ".join(
            f"CASE WHEN {r.column} IS NOT NULL THEN {r.column} IN (SELECT id FROM {r.table}) "
            f"END AS {r.flag}"
            for r in references
        )
        sql = f"SELECT *, {flags} FROM ({suite.sql})"
    frame = conn.execute(sql, suite.parameters).df()
    outcomes = run_suite(
        frame, [e.expectation() if isinstance(e, Reference) else e for e in declared]
    )

    failing = {label: _failing_count(result) for label, result in outcomes}
    failed = [label for label, result in outcomes if not result.success]
    # A failing reference shows the referring column, not the flag computed for it.
    shown = {r.flag: r.column for r in references}
    sample = _failing_rows(frame, outcomes, suite.sample_columns, shown)
    metadata: dict[str, object] = {
        "rows_checked": len(frame),
        "expectations": len(outcomes),
        "failed_expectations": len(failed),
        **{f"failing/{label}": count for label, count in failing.items()},
        "results": dg.MetadataValue.md(_results_table(outcomes, failing)),
    }
    if sample:
        metadata["failing_rows"] = dg.MetadataValue.md(_markdown(sample))
    return dg.AssetCheckResult(
        asset_key=check.asset_key if check else None,
        check_name=check.name if check else None,
        passed=not failed,
        severity=severity,
        metadata=metadata,
        description=f"failed: {'; '.join(failed)}" if failed else None,
    )


def run_suite(frame: pd.DataFrame, expectations: list[gxe.Expectation]) -> list[tuple[str, Any]]:
    """Validate the frame against the expectations as one Great Expectations suite; return
    each expectation's description (its label) and result, in the order given."""
    labels = [_label(e) for e in expectations]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two expectations of one suite share a description: {labels}")
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),  # they would go to stderr
            store_backend_defaults=InMemoryStoreBackendDefaults(),
        ),
    )
    batch = (
        context.data_sources.add_pandas("state_store")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name="stage_check", expectations=expectations)
    validation = batch.validate(suite, result_format=RESULT_FORMAT)
    by_label = {_label(result.expectation_config): result for result in validation.results}
    return [(label, by_label[label]) for label in labels]


def _label(expectation) -> str:
    return expectation.description or f"{expectation.type} {expectation.kwargs}"


def _failing_count(result) -> int:
    """Failing rows for a row-wise expectation; 1 or 0 for a table-wide one."""
    count = result.result.get("unexpected_count")
    if count is not None:
        return int(count)
    return 0 if result.success else 1


def _failing_rows(frame, outcomes, sample_columns, shown) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for label, result in outcomes:
        if result.success:
            continue
        indexes = result.result.get("partial_unexpected_index_list") or []
        if not indexes:  # a table-wide expectation: what it observed instead
            rows.append({"expectation": label, "row": "", "values": _observed(result)})
            continue
        columns = [shown.get(c, c) for c in _columns(result.expectation_config.kwargs)]
        for index in indexes:
            row = frame.loc[index]
            rows.append(
                {
                    "expectation": label,
                    "row": ", ".join(f"{c}={row[c]}" for c in sample_columns if c in row),
                    "values": ", ".join(f"{c}={row[c]}" for c in columns if c in row),
                }
            )
    return rows[:SAMPLE_ROWS]


def _columns(kwargs) -> list[str]:
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    return [kwargs[k] for k in ("column_A", "column_B") if k in kwargs]


def _observed(result) -> str:
    if result.exception_info and result.exception_info.get("raised_exception"):
        return str(result.exception_info.get("exception_message"))
    for info in result.exception_info.values() if result.exception_info else []:
        if isinstance(info, dict) and info.get("raised_exception"):
            return str(info.get("exception_message"))
    if "unexpected_count" in result.result:  # row-wise: some of the failing values
        return str(result.result.get("partial_unexpected_list", [])[:3])
    details = result.result.get("details")
    return str(details or result.result.get("observed_value"))


def _results_table(outcomes, failing) -> str:
    rows = [
        {
            "expectation": label,
            "passed": "yes" if r.success else "**no**",
            "failing": failing[label],
            "observed": "" if r.success else _observed(r)[:200],
        }
        for label, r in outcomes
    ]
    return _markdown(rows)


def _markdown(rows: list[dict[str, object]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = list(rows[0])
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(cell(row[h]) for h in header) + " |" for row in rows),
    ]
    return "\n".join(lines)


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
    blocking) and its freshness (a warning). ``table`` holds the entities' own records when
    every entity must have one (contacts); None when the record may not have arrived."""
    rows = {"entity_type": entity_type}
    own_record = [refers_to("entity_id", table)] if table else []
    exists_in = f" and exists in {table}" if table else ""

    @stage_check(
        asset,
        severity=ERROR,
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
                gxe.ExpectColumnPairValuesToBeEqual(
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
                gxe.ExpectTableRowCountToEqual(value=1, description="the state machine ran"),
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="load_id_seen",
                    column_B="newest_load_id",
                    description="every loaded change was seen",
                ),
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
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
            gxe.ExpectColumnValuesToNotBeNull(
                column="subscription_id", description="subscription_id is set"
            ),
            gxe.ExpectCompoundColumnsToBeUnique(
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
        [gxe.ExpectColumnValuesToBeNull(column="missing_id", description="no record waits")],
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
