"""What an analyst uses: `revorch sql` in every format, on the published copy."""

from __future__ import annotations

import csv
import io
import json
import os
from decimal import Decimal

import duckdb
import pytest

from revorch.cli import main

ROWS = [
    # id, name (a comma, quotes, a pipe, accents), amount, tags, since
    (1, 'Acme, "the" | best', Decimal("1234.50"), ["a", "b"], "2026-01-02"),
    (2, "Zoë", None, [], None),
]


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A real DuckDB file where `revorch sql` looks first: the published copy."""
    for name in list(os.environ):
        if name.startswith(("REVORCH_", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / ".revorch" / "published" / "revorch.duckdb"
    path.parent.mkdir(parents=True)
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE contacts (id INTEGER, name VARCHAR, amount DECIMAL(12, 2), "
            "tags VARCHAR[], since DATE)"
        )
        conn.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)", ROWS)
    return path


def _sql(capsys, query: str, *options: str) -> str:
    assert main(["sql", query, *options]) == 0
    return capsys.readouterr().out


QUERY = "SELECT * FROM contacts ORDER BY id"


def test_csv_parses_back_to_the_rows(published, capsys):
    rows = list(csv.reader(io.StringIO(_sql(capsys, QUERY, "--format", "csv"))))
    assert rows == [
        ["id", "name", "amount", "tags", "since"],
        ["1", 'Acme, "the" | best', "1234.50", "[a, b]", "2026-01-02"],
        ["2", "Zoë", "", "[]", ""],
    ]


def test_json_parses_back_to_the_rows(published, capsys):
    rows = json.loads(_sql(capsys, QUERY, "--format", "json"))
    assert rows == [
        {
            "id": 1,
            "name": 'Acme, "the" | best',
            "amount": "1234.50",  # decimals as strings: no precision lost
            "tags": ["a", "b"],
            "since": "2026-01-02",
        },
        {"id": 2, "name": "Zoë", "amount": None, "tags": [], "since": None},
    ]


def test_markdown_is_a_table_with_one_cell_per_value(published, capsys):
    lines = _sql(capsys, QUERY, "--format", "markdown").splitlines()
    assert len(lines) == 4
    header, rule, *body = lines
    cells = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in [header, *body]]
    assert cells == [
        ["id", "name", "amount", "tags", "since"],
        ["1", r'Acme, "the" \| best', "1234.50", "[a, b]", "2026-01-02"],
        ["2", "Zoë", "", "[]", ""],
    ]
    assert set(rule) <= {"|", "-", ":"}


def test_box_stays_the_default(published, capsys):
    out = _sql(capsys, QUERY)
    assert "┌" in out and "Zoë" in out
    assert out == _sql(capsys, QUERY, "--format", "box")


def test_every_row_is_written_not_only_the_first_hundred(published, capsys):
    rows = list(
        csv.reader(io.StringIO(_sql(capsys, "SELECT * FROM range(250)", "--format", "csv")))
    )
    assert len(rows) == 251 and rows[-1] == ["249"]


def test_a_statement_without_rows_prints_nothing(published, capsys):
    assert _sql(capsys, "SET threads = 1", "--format", "json") == ""
