"""Great Expectations on DuckDB: run a suite of expectations on the rows a query returns and
describe what failed (counts per expectation, a markdown table of results, a sample of failing
rows). Plain Python; the Dagster checks of the stage assets (orch_assets/stages/checks.py) turn
a :class:`Validation` into an asset check result (docs/data_quality.md).

Expectations are declared as plain data (:class:`Expectation`) and built into Great
Expectations only when a suite runs: importing GX takes seconds, which every process that
loads the definitions would otherwise pay before its run starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

# The ingestion quarantines changes dated more than a day ahead of the wall clock; a later
# timestamp in a stage table can only come from corruption.
FUTURE_TOLERANCE = timedelta(days=1)
SAMPLE_ROWS = 10


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


@dataclass(frozen=True)
class _Rule:
    """An expectation as DuckDB SQL: ``fails`` is true on a failing row (row-wise), or
    ``table_failure`` says why the whole table fails (table-wide, decided before the query)."""

    label: str
    columns: list[str]
    fails: str | None = None
    window: str | None = None  # a column the predicate reads, computed over all rows
    table_failure: str | None = None
    row_count: int | None = None  # the rows the table must have


def validate(conn: duckdb.DuckDBPyConnection, suite: Suite) -> Validation:
    """Run the suite's expectations in DuckDB over the rows its query returns (no copy into
    Python: one aggregate pass counts the failing rows of every expectation) and report rows
    checked, failing rows per expectation and up to ``SAMPLE_ROWS`` failing rows. Each
    expectation means what its Great Expectations class means (tests/test_quality.py checks
    the two agree)."""
    declared = [
        e for item in suite.expectations for e in (item if isinstance(item, list) else [item])
    ]
    references = [e for e in declared if isinstance(e, Reference)]
    sql = suite.sql
    if references:
        # A null reference is no reference: its flag stays null, which is not checked. (`NULL
        # IN (SELECT id FROM t)` is false, not null, when t is empty: a CRM without owners.)
        flags = ", ".join(
            f"CASE WHEN {r.column} IS NOT NULL THEN {r.column} IN (SELECT id FROM {r.table}) "
            f"END AS {r.flag}"
            for r in references
        )
        sql = f"SELECT *, {flags} FROM ({suite.sql})"
    expectations = [e.expectation() if isinstance(e, Reference) else e for e in declared]
    labels = [e.description for e in expectations]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two expectations of one suite share a description: {labels}")

    parameters = dict(suite.parameters)
    columns = [
        c[0] for c in _execute(conn, f"SELECT * FROM ({sql}) LIMIT 0", parameters).description
    ]
    rules = [_rule(e, i, columns, parameters) for i, e in enumerate(expectations)]
    row_rules = [(i, r) for i, r in enumerate(rules) if r.fails]
    windows = "".join(f", {r.window} AS _w{i}" for i, r in row_rules if r.window)
    fails = [f"coalesce({r.fails}, false) AS _f{i}" for i, r in row_rules] or ["1 AS _none"]
    flagged = (
        f"WITH checked AS (SELECT *{windows} FROM ({sql})) "
        f"SELECT *, {', '.join(fails)} FROM checked"
    )
    counted = [f"count(*) FILTER (WHERE _f{i})" for i, _ in row_rules]
    counts = _execute(
        conn, f"SELECT {', '.join(['count(*)', *counted])} FROM ({flagged})", parameters
    ).fetchone()
    rows_checked = int(counts[0])
    failing = {r.label: (1 if r.table_failure else 0) for r in rules}
    failing |= {r.label: int(n) for (_, r), n in zip(row_rules, counts[1:], strict=True)}
    observed = {r.label: r.table_failure for r in rules if r.table_failure}
    for r in rules:
        if r.row_count is not None and rows_checked != r.row_count:
            failing[r.label] = 1
            observed[r.label] = f"{rows_checked} rows, not {r.row_count}"
    failed = [r.label for r in rules if failing[r.label]]

    # A failing reference shows the referring column, not the flag computed for it.
    shown = {r.flag: r.column for r in references}
    sample: list[dict[str, object]] = []
    for i, r in row_rules:
        if not failing[r.label]:
            continue
        values = [shown.get(c, c) for c in r.columns]
        ids = [c for c in suite.sample_columns if c in columns]
        cursor = _execute(
            conn,
            f"SELECT {', '.join(dict.fromkeys([*ids, *values]))} FROM ({flagged}) "
            f"WHERE _f{i} LIMIT {SAMPLE_ROWS}",
            parameters,
        )
        names = [c[0] for c in cursor.description]
        found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        observed[r.label] = str([row[values[0]] for row in found[:3]])
        sample += [
            {
                "expectation": r.label,
                "row": ", ".join(f"{c}={row[c]}" for c in ids),
                "values": ", ".join(f"{c}={row[c]}" for c in values),
            }
            for row in found
        ]
    sample += [  # a table-wide failure: what was observed instead
        {"expectation": r.label, "row": "", "values": observed[r.label]}
        for r in rules
        if not r.fails and failing[r.label]
    ]
    results = [
        {
            "expectation": label,
            "passed": "**no**" if failing[label] else "yes",
            "failing": failing[label],
            "observed": observed.get(label, "")[:200] if failing[label] else "",
        }
        for label in labels
    ]
    return Validation(
        rows_checked=rows_checked,
        failing=failing,
        failed=failed,
        results_table=_markdown(results),
        failing_rows=_markdown(sample[:SAMPLE_ROWS]) if sample else None,
    )


def _execute(conn: duckdb.DuckDBPyConnection, sql: str, parameters: dict[str, object]):
    """Bind only the parameters the SQL names: DuckDB refuses unused ones."""
    used = {k: v for k, v in parameters.items() if re.search(rf"\${k}\b", sql)}
    return conn.execute(sql, used)


def _rule(
    expectation: Expectation, index: int, columns: list[str], parameters: dict[str, object]
) -> _Rule:
    """The expectation as SQL over the suite's rows; its values are bound as parameters."""
    kind, label, args = expectation.kind, expectation.description, expectation.arguments

    def value(name: str, bound: object) -> str:
        key = f"_e{index}_{name}"
        parameters[key] = bound
        return f"${key}"

    named = _columns(args)
    missing = [c for c in named if c not in columns]
    if missing:
        return _Rule(label, named, table_failure=f"no column {', '.join(missing)}")
    if kind == "ExpectTableColumnsToMatchSet":
        expected = list(args["column_set"])
        absent = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected] if args.get("exact_match", True) else []
        if absent or extra:
            return _Rule(label, [], table_failure=f"missing {absent}, unexpected {extra}")
        return _Rule(label, [])
    if kind == "ExpectTableRowCountToEqual":
        return _Rule(label, [], row_count=int(args["value"]))
    # Column expectations skip nulls (Great Expectations' map expectations do), except the
    # null checks themselves.
    column = named[0] if named else None
    if kind == "ExpectColumnValuesToNotBeNull":
        return _Rule(label, named, fails=f"{column} IS NULL")
    if kind == "ExpectColumnValuesToBeNull":
        return _Rule(label, named, fails=f"{column} IS NOT NULL")
    if kind == "ExpectColumnValuesToBeInSet":
        values = value("set", list(args["value_set"]))
        return _Rule(label, named, fails=f"NOT list_contains({values}, {column})")
    if kind == "ExpectColumnValuesToBeBetween":
        below, above = (
            ("<=", ">=") if args.get("strict_min") or args.get("strict_max") else ("<", ">")
        )
        tests = []
        if args.get("min_value") is not None:
            tests.append(f"{column} {below} {value('min', args['min_value'])}")
        if args.get("max_value") is not None:
            tests.append(f"{column} {above} {value('max', args['max_value'])}")
        return _Rule(label, named, fails=" OR ".join(tests) or "false")
    if kind == "ExpectColumnValuesToBeUnique":
        return _Rule(
            label,
            named,
            fails=f"{column} IS NOT NULL AND _w{index} > 1",
            window=f"count(*) OVER (PARTITION BY {column})",
        )
    if kind == "ExpectCompoundColumnsToBeUnique":
        skip = _skip_row(args.get("ignore_row_if", "all_values_are_missing"), named)
        return _Rule(
            label,
            named,
            fails=f"NOT ({skip}) AND _w{index} > 1",
            window=f"count(*) OVER (PARTITION BY {', '.join(named)})",
        )
    if kind in ("ExpectColumnPairValuesToBeEqual", "ExpectColumnPairValuesAToBeGreaterThanB"):
        a, b = named
        if kind == "ExpectColumnPairValuesToBeEqual":
            holds = f"{a} = {b}"
        else:
            holds = f"{a} {'>=' if args.get('or_equal') else '>'} {b}"
        skip = _skip_row(args.get("ignore_row_if", "both_values_are_missing"), named)
        # A comparison with one value missing is unknown, which Great Expectations passes.
        return _Rule(label, named, fails=f"NOT ({skip}) AND NOT ({holds})")
    raise ValueError(f"{kind} ({label}) has no SQL form in revorch.quality yet")


def _skip_row(ignore_row_if: str, columns: list[str]) -> str:
    """Great Expectations' ``ignore_row_if`` for pair and compound expectations, as SQL."""
    missing = [f"{c} IS NULL" for c in columns]
    if ignore_row_if in ("both_values_are_missing", "all_values_are_missing"):
        return " AND ".join(missing)
    if ignore_row_if in ("either_value_is_missing", "any_value_is_missing"):
        return " OR ".join(missing)
    if ignore_row_if in ("neither", "never"):
        return "false"
    raise ValueError(f"ignore_row_if={ignore_row_if!r} is not known")


def _columns(kwargs) -> list[str]:
    if "column" in kwargs:
        return [kwargs["column"]]
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    return [kwargs[k] for k in ("column_A", "column_B") if k in kwargs]


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
