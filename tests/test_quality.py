"""revorch.quality runs the checks' Great Expectations suites as DuckDB SQL. Each expectation
kind the checks declare must mean what its GX class means: on the same rows, good and bad,
the SQL counts the same failing rows as GX's pandas route, and a suite fails on bad data and
passes on good."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from revorch.quality.expectations import (
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

NOW = datetime.now(UTC)
ROWS = """
CREATE TABLE facts (id VARCHAR, seq INTEGER, stage VARCHAR, score DOUBLE, started TIMESTAMPTZ,
                    due TIMESTAMPTZ, a INTEGER, b INTEGER, owner VARCHAR);
CREATE TABLE owners (id VARCHAR);
INSERT INTO owners VALUES ('o1'), ('o2');
"""
GOOD = [
    ("c1", 1, "lead", 10.0, NOW - timedelta(days=3), NOW, 1, 1, "o1"),
    ("c2", 1, "mql", 100.0, NOW - timedelta(days=2), NOW, 2, 2, None),
    ("c3", 2, "sql", 0.0, None, NOW, None, None, "o2"),
]
BAD = [
    *GOOD,
    ("c1", 1, "lead", 140.0, NOW + timedelta(days=9), NOW - timedelta(days=20), 3, 4, "o9"),
    (None, 2, "won", -1.0, NOW, None, 5, None, "o1"),
    ("c4", 3, None, None, NOW, NOW - timedelta(days=1), None, 1, None),
]
EXPECTATIONS = [
    has_columns("id", "seq", "stage"),
    *is_key("id"),
    expect("ExpectCompoundColumnsToBeUnique", column_list=["id", "seq"], description="(id, seq)"),
    one_of("stage", ["lead", "mql", "sql"]),
    between("score", 0, 100),
    between("seq", 1),
    not_in_future("started"),
    not_before("due", "started"),
    expect("ExpectColumnPairValuesToBeEqual", column_A="a", column_B="b", description="a equals b"),
    expect("ExpectColumnValuesToBeNull", column="b", description="b is not set"),
]


def store(rows) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute(ROWS)
    conn.executemany("INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return conn


def gx_failing(frame, expectations) -> dict[str, int]:
    """Failing rows per expectation by Great Expectations' pandas route (the reference)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
            store_backend_defaults=InMemoryStoreBackendDefaults(),
        ),
    )
    batch = (
        context.data_sources.add_pandas("facts")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name="s", expectations=[e.build() for e in expectations])
    results = batch.validate(suite, result_format={"result_format": "SUMMARY"}).results
    return {
        r.expectation_config.description: int(
            r.result.get("unexpected_count", 0 if r.success else 1) or 0
        )
        if "unexpected_count" in r.result
        else (0 if r.success else 1)
        for r in results
    }


@pytest.mark.parametrize("rows", [GOOD, BAD], ids=["good", "bad"])
def test_sql_counts_the_failing_rows_great_expectations_counts(rows):
    conn = store(rows)
    validation = validate(conn, Suite("SELECT * FROM facts", EXPECTATIONS, ["id", "seq"]))
    frame = conn.execute("SELECT * FROM facts").df()
    assert validation.failing == gx_failing(frame, EXPECTATIONS)
    assert validation.rows_checked == len(rows)


def test_a_suite_fails_on_bad_rows_and_passes_on_good():
    suite = Suite(
        "SELECT * FROM facts",
        [*is_key("id"), between("score", 0, 100), refers_to("owner", "owners")],
        sample_columns=["id"],
    )
    good = validate(store(GOOD), suite)
    assert good.passed and good.failing_rows is None

    bad = validate(store(BAD), suite)
    assert not bad.passed
    assert bad.failing == {
        "id is set": 1,
        "id is unique": 2,
        "score is between 0 and 100": 2,
        "owner exists in owners": 1,
    }
    # The sample names the row and the referring column's value, not the flag behind it.
    assert "id=c1" in bad.failing_rows and "owner=o9" in bad.failing_rows
    assert "score=140.0" in bad.failing_rows


def test_an_expectation_on_a_missing_column_fails_and_an_unknown_kind_is_refused():
    conn = store(GOOD)
    missing = validate(conn, Suite("SELECT id FROM facts", [between("score", 0)], ["id"]))
    assert missing.failed == ["score is at least 0"]
    assert "no column score" in missing.failing_rows
    unknown = expect("ExpectColumnValuesToMatchRegex", column="id", regex="c", description="r")
    with pytest.raises(ValueError, match="no SQL form"):
        validate(conn, Suite("SELECT * FROM facts", [unknown], ["id"]))
