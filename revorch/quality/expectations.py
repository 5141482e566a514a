"""Great Expectations on DuckDB: run a suite of expectations on the rows a query returns and
describe what failed (counts per expectation, a markdown table of results, a sample of failing
rows). Plain Python; the Dagster checks of the stage assets (orch_assets/stages/checks.py) turn
a :class:`Validation` into an asset check result (docs/data_quality.md).

Expectations are declared as plain data (:class:`Expectation`) and built into Great
Expectations only when a suite runs: importing GX takes seconds, which every process that
loads the definitions would otherwise pay before its run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    import pandas as pd

# The ingestion quarantines changes dated more than a day ahead of the wall clock; a later
# timestamp in a stage table can only come from corruption.
FUTURE_TOLERANCE = timedelta(days=1)
SAMPLE_ROWS = 10
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}


# --- The vocabulary the checks are declared in -----------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """A Great Expectations 1.x expectation as plain data: the name of its class in
    ``great_expectations.expectations``, its description (the label of its result, unique in
    its suite) and its arguments."""

    kind: str
    description: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The GX expectation (imports Great Expectations, if not yet: seconds)."""
        import great_expectations.expectations as gxe

        return getattr(gxe, self.kind)(description=self.description, **self.arguments)


def expect(kind: str, *, description: str, **arguments: Any) -> Expectation:
    """Any GX expectation by its class name, e.g.
    ``expect("ExpectColumnValuesToBeNull", column="x", description="x is not set")``."""
    return Expectation(kind, description, arguments)


def has_columns(*columns: str) -> Expectation:
    return expect(
        "ExpectTableColumnsToMatchSet",
        column_set=list(columns),
        exact_match=False,
        description="has its columns",
    )


def is_key(*columns: str) -> list[Expectation]:
    """Every column of the key is set, and no two rows share the key."""
    named = ", ".join(columns)
    unique = (
        expect("ExpectColumnValuesToBeUnique", column=columns[0], description=f"{named} is unique")
        if len(columns) == 1
        else expect(
            "ExpectCompoundColumnsToBeUnique",
            column_list=list(columns),
            description=f"({named}) is unique",
        )
    )
    not_null = [
        expect("ExpectColumnValuesToNotBeNull", column=column, description=f"{column} is set")
        for column in columns
    ]
    return [*not_null, unique]


def one_of(column: str, values: Sequence[object]) -> Expectation:
    return expect(
        "ExpectColumnValuesToBeInSet",
        column=column,
        value_set=list(values),
        description=f"{column} is one of {list(values)}",
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

    def expectation(self) -> Expectation:
        return expect(
            "ExpectColumnValuesToBeInSet",
            column=self.flag,
            value_set=[True],
            description=f"{self.column} exists in {self.table}",
        )


def refers_to(column: str, table: str) -> Reference:
    return Reference(column, table)


def between(column: str, low: float | None = None, high: float | None = None) -> Expectation:
    if high is None:
        description = f"{column} is at least {low}"
    elif low is None:
        description = f"{column} is at most {high}"
    else:
        description = f"{column} is between {low} and {high}"
    return expect(
        "ExpectColumnValuesToBeBetween",
        column=column,
        min_value=low,
        max_value=high,
        description=description,
    )


def not_in_future(column: str) -> Expectation:
    """Not after the wall clock (with the ingestion's tolerance), whatever the data clock says."""
    return expect(
        "ExpectColumnValuesToBeBetween",
        column=column,
        max_value=datetime.now(UTC) + FUTURE_TOLERANCE,
        description=f"{column} is not in the future",
    )


def not_before(later: str, earlier: str) -> Expectation:
    return expect(
        "ExpectColumnPairValuesAToBeGreaterThanB",
        column_A=later,
        column_B=earlier,
        or_equal=True,
        ignore_row_if="either_value_is_missing",
        description=f"{later} >= {earlier}",
    )


# --- Running a suite --------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """What one check validates: the rows a query returns, and the expectations on them.

    ``sample_columns`` identify a failing row in the results (ids, never names or emails).
    """

    sql: str
    expectations: list[Expectation | Reference | list[Expectation]]
    sample_columns: list[str]
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Validation:
    """What a suite found: rows read, failing rows per expectation (by its description), the
    expectations that failed, a markdown table of every result and one of failing rows."""

    rows_checked: int
    failing: dict[str, int]
    failed: list[str]
    results_table: str
    failing_rows: str | None

    @property
    def passed(self) -> bool:
        return not self.failed


def validate(conn: duckdb.DuckDBPyConnection, suite: Suite) -> Validation:
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
    return Validation(
        rows_checked=len(frame),
        failing=failing,
        failed=failed,
        results_table=_results_table(outcomes, failing),
        failing_rows=_markdown(sample) if sample else None,
    )


def run_suite(frame: pd.DataFrame, expectations: list[Expectation]) -> list[tuple[str, Any]]:
    """Validate the frame against the expectations as one Great Expectations suite; return
    each expectation's description (its label) and result, in the order given."""
    # Seconds to import: here, when a suite runs, not when the checks are declared.
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    labels = [e.description for e in expectations]
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
    suite = gx.ExpectationSuite(name="stage_check", expectations=[e.build() for e in expectations])
    validation = batch.validate(suite, result_format=RESULT_FORMAT)
    by_label = {result.expectation_config.description: result for result in validation.results}
    return [(label, by_label[label]) for label in labels]


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
