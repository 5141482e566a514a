"""What an analyst uses: `revorch sql` in every format on the published copy, one funnel, and
clean exits for an unknown run and a reader that leaves early."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from conftest import CrmHome
from revorch.cli import main

ROWS = [
    # id, name (a comma, quotes, a pipe, accents), amount, tags, since
    (1, 'Acme, "the" | best', Decimal("1234.50"), ["a", "b"], "2026-01-02"),
    (2, "Zoë", None, [], None),
]


@pytest.fixture
def published(in_empty_folder):
    """A real DuckDB file where `revorch sql` looks first: the published copy."""
    path = in_empty_folder / ".revorch" / "published" / "revorch.duckdb"
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


# --- on the shared simulated CRM, through the `revorch` command as a user runs it -------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "revorch.cli", *args]


def _environment(home: CrmHome) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    return env | home.env()


def _revorch(home: CrmHome, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(*args), env=_environment(home), capture_output=True, text=True, timeout=300
    )


# What the CRM's own lifecycle_stage labels say: not the funnel Revorch shows.
CRM_LABELS_SQL = """
SELECT properties->>'lifecycle_stage', count(DISTINCT object_id) FROM change_log
WHERE object_type = 'contact' AND json_exists(properties, '$.lifecycle_stage') GROUP BY 1
"""
CRM_LABEL = {"mql": "marketingqualifiedlead", "sql": "salesqualifiedlead"}


def test_the_funnel_shown_is_the_stage_machines_everywhere(copy_crm):
    home = copy_crm()
    with duckdb.connect(str(home.database), read_only=True) as conn:
        machine = dict(
            conn.execute(
                "SELECT stage, reached FROM metrics.funnel_conversion "
                "WHERE lead_source = '(all)' ORDER BY stage_order"
            ).fetchall()
        )
        labels = dict(conn.execute(CRM_LABELS_SQL).fetchall())
    # The two definitions disagree on this CRM, so the test tells which one is shown.
    assert any(labels.get(CRM_LABEL.get(stage, stage), 0) != n for stage, n in machine.items())

    done = _revorch(home, "report", "funnel")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "as Revorch's stage machine places them" in lines[0]
    shown = {}
    for line in lines[1 : 1 + len(machine)]:
        stage, count = line.split()[:2]
        shown[stage] = int(count.replace(",", ""))
    assert shown == machine

    # The Monday report the graph writes says the same.
    report = next((home.root / "reports").glob("funnel-*.md")).read_text()
    assert "\n".join(lines[: 1 + len(machine)]) in report


def test_replay_of_an_unknown_run_says_so_and_how_to_list_runs(copy_crm):
    home = copy_crm()
    done = _revorch(home, "replay", "nosuchrun")
    assert done.returncode == 2
    assert "no run 'nosuchrun'" in done.stderr and "revorch sql" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr

    with duckdb.connect(str(home.database), read_only=True) as conn:
        run_id, decisions = conn.execute(
            "SELECT run_id, count(*) FROM agents.decisions GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        ).fetchone()
    known = _revorch(home, "replay", run_id)
    assert known.returncode == 0, known.stderr
    assert f"{decisions} decisions replayed" in known.stdout


def test_a_reader_that_closed_the_pipe_ends_revorch_quietly(copy_crm):
    home = copy_crm()
    read, write = os.pipe()
    os.close(read)  # the reader is gone before revorch writes a byte
    try:
        done = subprocess.run(
            _command("report", "funnel"),
            env=_environment(home),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_head_takes_the_first_line_of_a_long_output_without_a_traceback(published):
    # Far more than a pipe holds, so revorch is still writing when head leaves.
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'set -o pipefail; "{sys.executable}" -m revorch.cli sql '
            '"SELECT * FROM range(200000)" --format csv | head -1',
        ],
        # As in a user's shell: unbuffered, a write cut short by the reader leaving is not an
        # error (Python's text layer ignores the short write), so there is nothing to catch.
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith("REVORCH_") and k != "PYTHONUNBUFFERED"
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (done.returncode, done.stdout, done.stderr) == (141, "range\n", "")


def test_analysts_read_the_published_copy_while_a_run_holds_the_working_file(copy_crm):
    home = copy_crm()
    published = home.root / "published" / "revorch.duckdb"
    with duckdb.connect(str(published), read_only=True) as conn:
        contacts = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
    writer = home.connect()  # as a run holds it: no other process may open the working file
    try:
        done = _revorch(home, "sql", "SELECT count(*) AS n FROM contacts", "--format", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [{"n": contacts}]

        # The DuckDB CLI of the `analyst` extra, as docs/schema.md shows it.
        cli = Path(sys.executable).with_name("duckdb")
        if not cli.exists():
            pytest.skip("the DuckDB CLI is not installed (pip install -e '.[analyst]')")
        shell = subprocess.run(
            [
                str(cli),
                "-readonly",
                str(published),
                "-csv",
                "-c",
                "SELECT count(*) AS n FROM contacts",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (shell.returncode, shell.stdout) == (0, f"n\n{contacts}\n"), shell.stderr
    finally:
        writer.close()
