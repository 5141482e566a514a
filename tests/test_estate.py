"""The automation-estate audit: inventory import (every row loaded or refused), re-import,
and the ranking on the simulator's estate (docs/estate.md)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from conftest import read_state
from resources import StateStore
from revorch import cli

# Imported with the test session's environment: the definitions read the config paths when
# first imported, and a test that points them elsewhere (test_cli.py) must not leak here.
from revorch.definitions import THROUGH_HANDOFFS, materialize
from revorch.estate.inventory import import_inventory
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history
from revorch.simulator.estate import CONFLICTING, HELPFUL, USELESS, simulate_estate

HUBSPOT_EXPORT = {
    "results": [
        {
            "id": "585051946",
            "name": "MQL follow-up",
            "isEnabled": True,
            "flowType": "WORKFLOW",
            "type": "CONTACT_FLOW",
            "objectTypeId": "0-1",
            "enrollmentCriteria": {"type": "LIST_BASED"},
            "actions": [
                {
                    "actionId": "1",
                    "actionTypeId": "0-5",
                    "type": "SINGLE_CONNECTION",
                    "fields": {
                        "property_name": "lifecyclestage",
                        "value": {"staticValue": "salesqualifiedlead"},
                    },
                },
                {
                    "actionId": "2",
                    "actionTypeId": "0-4",
                    "type": "SINGLE_CONNECTION",
                    "fields": {"content_id": 7},
                },
            ],
        },
        {
            "id": 585051947,
            "name": "Deal hygiene",
            "isEnabled": False,
            "objectTypeId": "0-3",
            "flowType": "WORKFLOW",
        },
        {"name": "no id", "isEnabled": True},
        {"id": "585051949", "name": "enabled unknown", "isEnabled": "maybe"},
        "not an object",
        {"id": "585051946", "name": "MQL follow-up again", "isEnabled": True},
    ]
}

SALESFORCE_CSV = """DurableId,ApiName,Label,ProcessType,TriggerType,TriggerObjectOrEventLabel,IsActive,FieldsWritten
300Dn0000001,Opp_Stage_Sync,Opportunity stage sync,AutoLaunchedFlow,RecordAfterSave,Opportunity,true,StageName;Amount
,Lead_Route,Lead routing,AutoLaunchedFlow,RecordBeforeSave,Lead,false,OwnerId
,,,AutoLaunchedFlow,RecordAfterSave,Lead,true,
300Dn0000004,Broken,Broken flow,AutoLaunchedFlow,RecordAfterSave,Lead,sometimes,
300Dn0000005,Short row
"""

ZAPIER_CSV = """id,name,platform,trigger,object_type,fields_written,status
9001,Webinar tagging,zapier,New registrant,contact,webinar_tag,on
77,Enrich companies,make,Every hour,company,industry;employees,paused
78,Sheet sync,airtable,Row added,contact,email,on
79,Odd object,zapier,Row added,invoice,email,on
"""

NORMALISED_CSV = """id,name,platform,trigger,object_type,fields_written,enabled,source_key
a1,Renewal reminder,other,daily,subscription,status,true,ops-scripts
a2,,other,daily,contact,,true,
a1,Renewal reminder twice,other,daily,subscription,status,true,
"""


@pytest.fixture
def inventories(tmp_path: Path) -> dict[str, Path]:
    files = {
        "hubspot": ("hubspot.json", json.dumps(HUBSPOT_EXPORT)),
        "salesforce": ("flows.csv", SALESFORCE_CSV),
        "zapier": ("zaps.csv", ZAPIER_CSV),
        "csv": ("estate.csv", NORMALISED_CSV),
    }
    out = {}
    for fmt, (name, text) in files.items():
        out[fmt] = tmp_path / name
        out[fmt].write_text(text)
    return out


def _loaded(conn) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT automation_id, name, trigger, object_type, fields_written, enabled, source_key "
        "FROM estate.automations"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _refused(conn) -> list[tuple[int, str]]:
    return conn.execute(
        "SELECT row_number, reason FROM estate.import_refusals ORDER BY row_number"
    ).fetchall()


def test_each_format_loads_its_rows_and_refuses_bad_ones_with_reasons(conn, inventories):
    results = {fmt: import_inventory(conn, path, fmt) for fmt, path in inventories.items()}
    loaded = _loaded(conn)
    assert loaded == {
        # HubSpot property names read as Revorch's columns (lifecyclestage -> lifecycle_stage).
        "hubspot:585051946": (
            "MQL follow-up",
            "contact LIST_BASED",
            "contact",
            ["lifecycle_stage"],
            True,
            "hubspot:585051946",
        ),
        "hubspot:585051947": (
            "Deal hygiene",
            "deal WORKFLOW",
            "deal",
            [],
            False,
            "hubspot:585051947",
        ),
        "salesforce:300Dn0000001": (
            "Opportunity stage sync",
            "AutoLaunchedFlow RecordAfterSave Opportunity",
            "deal",
            ["stage", "amount"],
            True,
            "salesforce:300Dn0000001",
        ),
        "salesforce:Lead_Route": (
            "Lead routing",
            "AutoLaunchedFlow RecordBeforeSave Lead",
            "contact",
            ["owner_id"],
            False,
            "salesforce:Lead_Route",
        ),
        "zapier:9001": (
            "Webinar tagging",
            "New registrant",
            "contact",
            ["webinar_tag"],
            True,
            "zapier:9001",
        ),
        "make:77": (
            "Enrich companies",
            "Every hour",
            "company",
            ["industry", "employees"],
            False,
            "make:77",
        ),
        "other:a1": ("Renewal reminder", "daily", "subscription", ["status"], True, "ops-scripts"),
    }
    assert {fmt: r.reasons() for fmt, r in results.items()} == {
        "hubspot": {"duplicate_id": 1, "invalid_enabled": 1, "missing_id": 1, "not_a_record": 1},
        "salesforce": {"invalid_enabled": 1, "missing_id": 1, "wrong_column_count": 1},
        "zapier": {"unknown_object_type": 1, "unknown_platform": 1},
        "csv": {"duplicate_id": 1, "missing_name": 1},
    }
    # Every row is accounted for, in the table too, with the raw record kept.
    imports = conn.execute(
        "SELECT format, rows_read, loaded, refused FROM estate.imports ORDER BY format"
    ).fetchall()
    assert imports == [
        ("csv", 3, 1, 2),
        ("hubspot", 6, 2, 4),
        ("salesforce", 5, 2, 3),
        ("zapier", 4, 2, 2),
    ]
    raw = dict(conn.execute("SELECT reason, raw FROM estate.import_refusals").fetchall())
    assert raw["wrong_column_count"] == "300Dn0000005,Short row"
    assert raw["not_a_record"] == '"not an object"'


def test_reimport_of_the_same_file_changes_nothing(conn, inventories):
    def snapshot():
        return (
            sorted(conn.execute("SELECT * FROM estate.automations").fetchall()),
            sorted(conn.execute("SELECT * FROM estate.import_refusals").fetchall()),
            conn.execute("SELECT count(*) FROM estate.imports").fetchone(),
        )

    for fmt, path in inventories.items():
        import_inventory(conn, path, fmt)
    first = snapshot()
    for fmt, path in inventories.items():
        import_inventory(conn, path, fmt)
    assert snapshot() == first
    # A newer export of an automation replaces it, without a second row.
    inventories["zapier"].write_text(ZAPIER_CSV.replace("Webinar tagging", "Webinar tags v2"))
    import_inventory(conn, inventories["zapier"], "zapier")
    names = conn.execute(
        "SELECT name FROM estate.automations WHERE automation_id = 'zapier:9001'"
    ).fetchall()
    assert names == [("Webinar tags v2",)]


def test_a_file_that_is_not_the_format_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REVORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REVORCH_DB", raising=False)
    path = tmp_path / "zaps.csv"
    path.write_text(ZAPIER_CSV)
    assert cli.main(["estate", "import", str(path), "--format", "hubspot"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert cli.main(["estate", "import", str(path), "--format", "zapier"]) == 0
    out = capsys.readouterr().out
    assert "2 automations loaded, 2 refused" in out
    assert "unknown_platform" in out
    # Into the state the audit reads: the home's file, or on DuckLake the lake.
    with read_state(tmp_path / "home" / "revorch.duckdb") as conn:
        assert conn.execute("SELECT count(*) FROM estate.automations").fetchone()[0] == 2


# --- the audit on the simulator's estate -----------------------------------------------------


def _per_lake(fixture_name: str, config: pytest.Config) -> str:
    """Once per module on the file; on DuckLake once per test, as each test has its own lake
    (``state_backend``, which then runs first, so the build writes to that lake)."""
    return "function" if config.getoption("--state-backend") == "ducklake" else "module"


@pytest.fixture(scope=_per_lake)
def audited(tmp_path_factory):
    """A simulated CRM with its estate, the inventory imported, the audit materialized."""
    home = tmp_path_factory.mktemp("estate")
    zone = LandingZone(home / "landing")
    config = SimulationConfig(contacts=400, seed=5)
    simulate_history(zone, config)
    estate = simulate_estate(zone, config, home / "inventory")
    database = home / "revorch.duckdb"
    with StateStore.configured(database).get_connection() as conn:
        for path, fmt in zip(estate.inventory, ["hubspot", "salesforce", "zapier"], strict=True):
            import_inventory(conn, path, fmt)
    selection = THROUGH_HANDOFFS | dg.AssetSelection.assets(["metrics", "automation_estate"])
    result = materialize(selection, database=database, landing=zone.root)
    [metadata] = [
        {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["metrics", "automation_estate"])
    ]
    return home, database, estate, metadata


def _ranking(database: Path) -> list[tuple]:
    with read_state(database) as conn:
        return conn.execute(
            "SELECT automation_id, recommendation, changes, lift_low, conflicts_with, flip_flops "
            "FROM metrics.automation_estate ORDER BY rank"
        ).fetchall()


def test_the_audit_ranks_the_useless_automation_last_and_flags_the_conflict(audited):
    _, database, estate, metadata = audited
    ranking = _ranking(database)
    assert [row[0] for row in ranking][-1] == USELESS
    by_id = {row[0]: row for row in ranking}
    assert by_id[USELESS][1] == "retire"
    # Busy, yet retired: its activity is the largest of the estate.
    assert by_id[USELESS][2] == max(row[2] for row in ranking) == estate.by_automation[USELESS]
    for helpful in HELPFUL:
        assert by_id[helpful][1] == "keep" and by_id[helpful][3] > 0
    flagged = {row[0]: row[4] for row in ranking if row[4]}
    assert flagged == {CONFLICTING[0]: [CONFLICTING[1]], CONFLICTING[1]: [CONFLICTING[0]]}
    for automation in CONFLICTING:
        assert by_id[automation][1] == "migrate" and by_id[automation][5] > 0
    assert metadata["automations"] == 5
    assert (metadata["keep"], metadata["migrate"], metadata["retire"]) == (2, 2, 1)
    assert metadata["conflicting_pairs"] == 1


def test_changes_of_a_source_no_automation_claims_are_not_attributed(audited):
    _, database, estate, _ = audited
    with read_state(database) as conn:
        per_source = dict(
            conn.execute(
                "SELECT source, count(*) FROM change_log WHERE source <> 'simulator' GROUP BY ALL"
            ).fetchall()
        )
        attributed = dict(
            conn.execute(
                "SELECT automation_id, count(DISTINCT event_id) FROM estate.attributed_changes "
                "GROUP BY ALL"
            ).fetchall()
        )
    assert per_source == estate.by_automation == attributed


def test_revorch_estate_report_prints_the_ranking(audited, monkeypatch, capsys):
    home, database, _, _ = audited
    monkeypatch.setenv("REVORCH_HOME", str(home))
    monkeypatch.setenv("REVORCH_DB", str(database))
    assert cli.main(["estate", "report"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Automation estate: 5 automations, best first."
    verdicts = [line.split()[1] for line in lines if line[:4].strip().rstrip(".").isdigit()]
    assert verdicts == ["KEEP", "KEEP", "MIGRATE", "MIGRATE", "RETIRE"]
    assert "5. RETIRE   zapier:9001" in "\n".join(lines)


def test_revorch_simulate_estate_lands_the_changes_and_writes_the_inventory(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("REVORCH_HOME", str(tmp_path))
    for name in ("REVORCH_DB", "REVORCH_LANDING"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["simulate", "--contacts", "150", "--seed", "3", "--estate"]) == 0
    batches = sorted(p.name for p in (tmp_path / "landing" / "incoming").iterdir())
    assert [b for b in batches if b.startswith("estate-")] != []
    inventory = sorted(p.name for p in (tmp_path / "estate").iterdir())
    assert inventory == ["hubspot_workflows.json", "salesforce_flows.json", "zapier_zaps.csv"]
    assert "changes of 5 automations" in capsys.readouterr().out
