"""`revorch import --mapping`: CRM exports (CSV) through a mapping file into the landing zone,
then through the real ingestion assets into the state store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from conftest import ingest_and_stage
from revorch.cli import main
from revorch.landing import LandingZone
from revorch.sources.csv_import import load_mapping
from revorch.sources.csv_import.mapping import shipped_mapping

DATA = Path(__file__).parent / "data"
MAVEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "maven_crm_sales_opportunities"
INGESTION = dg.AssetSelection.groups("ingestion", "crm_state").without_checks()


def _import(home: Path, *args: str) -> dict:
    """Run `revorch import --mapping ...` and return the report it wrote."""
    assert main(["import", "--mapping", *args]) == 0
    # Each import's folder is named after its batch, and batch ids sort by time.
    reports = sorted((home / ".revorch" / "imports").glob("*/report.json"))
    return json.loads(reports[-1].read_text())


def _ingest(home: Path) -> duckdb.DuckDBPyConnection:
    database = home / ".revorch" / "revorch.duckdb"
    ingest_and_stage(database, LandingZone(home / ".revorch" / "landing"), selection=INGESTION)
    return duckdb.connect(str(database), read_only=True)


def _accounted_for(report: dict) -> None:
    for file in report["files"]:
        assert file["rows"] == file["loaded"] + file["quarantined"], file
        assert sum(file["reasons"].values()) == file["quarantined"], file


@pytest.mark.skipif(not MAVEN.is_dir(), reason=f"the Maven CRM export is not at {MAVEN}")
def test_the_maven_export_imports_with_every_row_accounted_for(in_empty_folder, capsys):
    report = _import(in_empty_folder, "maven_crm", str(MAVEN))
    _accounted_for(report)
    by_file = {f["file"]: f for f in report["files"]}
    assert {name: f["rows"] for name, f in by_file.items()} == {
        "accounts.csv": 85,
        "sales_pipeline.csv": 8_800,
        "sales_teams.csv": 35,
    }
    assert report["ignored"] == ["data_dictionary.csv", "products.csv"]
    printed = capsys.readouterr().out
    assert "sales_pipeline.csv" in printed and "8,800" in printed

    with _ingest(in_empty_folder) as conn:
        # Ingestion takes every landed event: its own strict checks refuse none.
        assert conn.sql("SELECT sum(loaded), sum(quarantined) FROM landing_batches").fetchone() == (
            8_920,
            0,
        )
        stages = dict(conn.sql("SELECT stage, count(*) FROM deals GROUP BY 1").fetchall())
        assert stages == {
            "closedwon": 4_238,
            "closedlost": 2_473,
            "qualifiedtobuy": 1_589,
            "appointmentscheduled": 500,
        }
        assert conn.sql("SELECT count(*) FROM deals WHERE company_id IS NULL").fetchone() == (
            1_425,
        )
        # Every named account and agent is a record the deal's reference finds.
        dangling = conn.sql(
            "SELECT count(*) FROM deals d WHERE (company_id IS NOT NULL AND company_id NOT IN "
            "(SELECT id FROM companies)) OR owner_id NOT IN (SELECT id FROM owners)"
        ).fetchone()
        assert dangling == (0,)
        industries = {row[0] for row in conn.sql("SELECT industry FROM companies").fetchall()}
        assert "technology" in industries and "technolgy" not in industries
        products = dict(
            conn.sql(
                "SELECT properties->>'product', count(*) FROM change_log "
                "WHERE object_type = 'deal' GROUP BY 1"
            ).fetchall()
        )
        assert products["GTX Pro"] == 1_480 and "GTXPro" not in products
        won = conn.sql(
            "SELECT amount, close_date, closed_at FROM deals WHERE id = 'maven-1C1I7A6R'"
        ).fetchone()
        assert won[0] == 1054 and str(won[1]) == "2017-03-01" and won[2].year == 2017


HUBSPOT_STAGES = {"7001": "closedwon", "7002": "contractsent", "7003": "qualifiedtobuy",
                  "7004": "closedlost"}  # fmt: skip
SALESFORCE_STAGES = {
    "0065g00000M3aAAAAZ": "closedwon",
    "0065g00000M3aBBAAZ": "contractsent",
    "0065g00000M3aCCAAZ": "qualifiedtobuy",
    "0065g00000M3aDDAAZ": "closedlost",
}


@pytest.mark.parametrize(
    ("mapping", "stages", "quarantined"),
    [
        ("hubspot_export", HUBSPOT_STAGES, {"unmapped_value": 1, "wrong_type": 1}),
        ("salesforce_export", SALESFORCE_STAGES, {"unmapped_value": 1}),
    ],
)
def test_vendor_sample_exports_land_in_state_with_the_right_stages(
    in_empty_folder, mapping, stages, quarantined
):
    report = _import(in_empty_folder, mapping, str(DATA / mapping))
    _accounted_for(report)
    reasons: dict[str, int] = {}
    for file in report["files"]:
        for reason, count in file["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert reasons == quarantined
    quarantine = Path(report["quarantine_path"]).read_text()
    assert quarantine.count("\n") == 1 + sum(quarantined.values())

    with _ingest(in_empty_folder) as conn:
        assert dict(conn.sql("SELECT id, stage FROM deals").fetchall()) == stages
        # The quarantined deal (a custom stage, or an amount of "12k") is not there at all.
        assert conn.sql("SELECT count(*) FROM quarantine").fetchone() == (0,)
        closed = dict(conn.sql("SELECT id, closed_at IS NOT NULL FROM deals").fetchall())
        assert {d for d, is_closed in closed.items() if is_closed} == {
            d for d, stage in stages.items() if stage in ("closedwon", "closedlost")
        }
        # References meet: every deal's company is an imported company.
        assert conn.sql(
            "SELECT count(*) FROM deals WHERE company_id NOT IN (SELECT id FROM companies)"
        ).fetchone() == (0,)


def test_hubspot_contacts_keep_stages_and_typed_custom_properties(in_empty_folder):
    _import(in_empty_folder, "hubspot_export", str(DATA / "hubspot_export"))
    with _ingest(in_empty_folder) as conn:
        contacts = conn.sql(
            "SELECT id, lifecycle_stage, lead_status, company_id FROM contacts ORDER BY id"
        ).fetchall()
        assert contacts == [
            ("501", "customer", "connected", "9001"),
            ("502", "opportunity", "open_deal", "9002"),  # "9002;9001": the first is kept
            ("503", "marketingqualifiedlead", "new", "9002"),
            ("504", "lead", "attempted_to_contact", "9003"),
        ]
        custom = conn.sql(
            "SELECT json_type(properties->'page_views'), json_type(properties->'hubspot_score'),"
            " json_type(properties->'unsubscribed') FROM change_log WHERE object_id = '504'"
        ).fetchone()
        assert custom == ("UBIGINT", "DOUBLE", "BOOLEAN")
    declared = load_mapping(shipped_mapping("hubspot_export")).custom_properties()
    assert declared["contact"]["page_views"] == "integer"
    assert declared["contact"]["unsubscribed"] == "boolean"


def test_re_importing_the_same_files_has_no_second_effect(in_empty_folder):
    first = _import(in_empty_folder, "hubspot_export", str(DATA / "hubspot_export"))
    with _ingest(in_empty_folder) as conn:
        before = conn.sql("SELECT * FROM change_log ORDER BY event_id").fetchall()
        deals_before = conn.sql(
            "SELECT * EXCLUDE (_first_seen_at) FROM deals ORDER BY id"
        ).fetchall()
    second = _import(in_empty_folder, "hubspot_export", str(DATA / "hubspot_export"))
    assert second["batch"] != first["batch"] and second["loaded"] == first["loaded"]
    with _ingest(in_empty_folder) as conn:
        assert conn.sql("SELECT * FROM change_log ORDER BY event_id").fetchall() == before
        assert conn.sql("SELECT * EXCLUDE (_first_seen_at) FROM deals ORDER BY id").fetchall() == (
            deals_before
        )
        batches = conn.sql(
            "SELECT loaded, duplicates FROM landing_batches ORDER BY load_id"
        ).fetchall()
        assert batches == [(first["loaded"], 0), (0, second["loaded"])]


PLAIN = """\
source: plain_csv
files:
  companies:
    match: "companies*.csv"
    object_type: company
    id: {column: id, prefix: "acct-"}
    occurred_at: import_time
    fields:
      name: name
      employees: headcount
"""


def test_a_file_without_timestamps_takes_the_import_time_once(in_empty_folder):
    """The documented rule: every row of a file without timestamps occurred at the import's
    time (one instant for the whole file, never per row); the same file imported again later
    is the same events, so it changes nothing."""
    (in_empty_folder / "plain.yaml").write_text(PLAIN)
    export = in_empty_folder / "companies.csv"
    export.write_text("id,name,headcount\n1,Acme,120\n2,Globex,\n3,Initech,many\n,NoId,5\n")
    report = _import(in_empty_folder, "plain.yaml", str(export))
    _accounted_for(report)
    assert report["files"][0]["reasons"] == {"wrong_type": 1, "missing_id": 1}
    batch = LandingZone(in_empty_folder / ".revorch" / "landing").pending()[0]
    events = [json.loads(line) for line in batch.read_text().splitlines()]
    assert {e["occurred_at"] for e in events} == {report["imported_at"]}
    assert [e["properties"] for e in events] == [
        {"name": "Acme", "employees": 120},
        {"name": "Globex", "employees": None},
    ]
    with _ingest(in_empty_folder) as conn:
        assert conn.sql("SELECT id, employees FROM companies ORDER BY id").fetchall() == [
            ("acct-1", 120),
            ("acct-2", None),
        ]
    again = _import(in_empty_folder, "plain.yaml", str(export))
    assert again["imported_at"] != report["imported_at"]
    with _ingest(in_empty_folder) as conn:
        assert conn.sql("SELECT count(*) FROM change_log").fetchone() == (2,)


def test_rows_without_their_timestamp_or_with_broken_csv_are_quarantined(in_empty_folder):
    (in_empty_folder / "m.yaml").write_text(
        PLAIN.replace(
            "occurred_at: import_time",
            'occurred_at: {column: updated, format: "%d/%m/%Y %H:%M", timezone: Europe/Paris}',
        )
    )
    export = in_empty_folder / "companies.csv"
    export.write_text(
        "id,name,headcount,updated\n"
        "1,Acme,120,01/03/2026 10:30\n"
        "2,Globex,40,\n"
        "3,Initech,7,2026-03-01\n"
        '4,"Umbrella, Inc",9,01/03/2026 11:00,extra\n'
        "5,Hooli,3,01/03/2026 12:00\n"
    )
    report = _import(in_empty_folder, "m.yaml", str(export))
    _accounted_for(report)
    assert report["files"][0]["rows"] == 5
    assert report["files"][0]["reasons"] == {"invalid_occurred_at": 2, "malformed_csv_line": 1}
    batch = LandingZone(in_empty_folder / ".revorch" / "landing").pending()[0]
    times = [json.loads(line)["occurred_at"] for line in batch.read_text().splitlines()]
    assert times == ["2026-03-01T09:30:00.000000Z", "2026-03-01T11:00:00.000000Z"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("name: name", "nme: name"), "key files.companies.fields.nme: not a company field"),
        (("object_type: company", "object_type: firm"), "key files.companies.object_type"),
        (("import_time", "import-time"), "key files.companies.occurred_at"),
        (("headcount", "{column: headcount, ref: people}"), "refers to 'people'"),
        (("source: plain_csv", "source: Plain CSV"), "lower-case letters"),
        (("files:", "timezone: Mars/Olympus\nfiles:"), "unknown time zone 'Mars/Olympus'"),
        (("      employees: headcount", "    custom:\n      size: headcount"), "need a type"),
        (("fields:", "fields: [oops"), "not YAML at line"),
        (("headcount", "staff"), "companies.csv (entry companies) has no column 'staff'"),
    ],
)
def test_a_bad_mapping_is_one_clear_line_and_lands_nothing(
    in_empty_folder, capsys, change, expected
):
    (in_empty_folder / "bad.yaml").write_text(PLAIN.replace(*change))
    (in_empty_folder / "companies.csv").write_text("id,name,headcount\n1,Acme,120\n")
    assert main(["import", "--mapping", "bad.yaml", "companies.csv"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("revorch import: "), error
    assert expected in error, error
    landing = in_empty_folder / ".revorch" / "landing" / "incoming"
    assert not landing.exists() or not any(landing.iterdir())


def test_a_file_no_entry_takes_is_refused_by_name(in_empty_folder, capsys):
    shutil.copy(DATA / "salesforce_export" / "Account.csv", in_empty_folder / "Accounts2.csv")
    assert main(["import", "--mapping", "salesforce_export", "Accounts2.csv"]) == 2
    error = capsys.readouterr().err
    assert "Accounts2.csv matches no entry of the mapping" in error and "Account.csv" in error


def test_a_progress_bar_on_a_terminal_only(in_empty_folder, capsys, monkeypatch):
    from revorch import cli
    from revorch.sources.csv_import import import_files

    export = in_empty_folder / "companies.csv"
    export.write_text("id,name,headcount\n1,Acme,120\n2,Globex,40\n")
    (in_empty_folder / "plain.yaml").write_text(PLAIN)
    mapping = load_mapping(in_empty_folder / "plain.yaml")
    zone = LandingZone(in_empty_folder / "landing")
    import_files([export], mapping, zone, in_empty_folder / "reports", progress=True)
    assert "import: " in capsys.readouterr().err
    import_files([export], mapping, zone, in_empty_folder / "reports", progress=False)
    assert capsys.readouterr().err == ""

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(cli.sys, "stderr", Terminal())
    monkeypatch.delenv("CI", raising=False)
    assert cli._progress_bar_wanted()
    monkeypatch.setenv("CI", "true")
    assert not cli._progress_bar_wanted()


def test_a_record_twice_in_one_file_keeps_its_first_good_row(in_empty_folder, capsys):
    (in_empty_folder / "plain.yaml").write_text(PLAIN)
    export = in_empty_folder / "companies.csv"
    export.write_text(
        "id,name,headcount\n1,Acme,lots\n1,Acme,120\n1,Acme Inc,130\n2,Globex,4\n2,Globex,4\n"
    )
    report = _import(in_empty_folder, "plain.yaml", str(export))
    _accounted_for(report)
    assert report["files"][0]["reasons"] == {"wrong_type": 1, "duplicate_id": 2}
    quarantined = Path(report["quarantine_path"]).read_text().splitlines()[1:]
    assert [line.split(",")[1] for line in quarantined] == ["1", "3", "5"]
    # Row 1 is refused for its value, so row 2 is the first good row of acct-1.
    assert "same id as row 2" in quarantined[1] and "same id as row 4" in quarantined[2]
    batch = LandingZone(in_empty_folder / ".revorch" / "landing").pending()[0]
    events = [json.loads(line) for line in batch.read_text().splitlines()]
    assert [(e["object_id"], e["properties"]["employees"]) for e in events] == [
        ("acct-1", 120),
        ("acct-2", 4),
    ]
    assert main(["import", "--mapping", "plain.yaml", "--source", "x", str(export)]) == 2
    assert "--source and --force are for NDJSON files" in capsys.readouterr().err
