"""The simulator's output, malformed and duplicated, ingested: every line accounted for."""

import shutil

import dagster as dg
import polars as pl
import pytest

from conftest import CrmHome, ingest_and_stage, into_this_lake
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, history_frame, simulate_history

CONFIG = SimulationConfig(
    contacts=1_000, seed=7, malformed_share=0.02, duplicate_share=0.05, batch_size=5_000
)


INGESTION = dg.AssetSelection.groups("ingestion", "crm_state")


def ingest(database, zone) -> dict[str, object]:
    """Ingest what waits in ``zone`` through the ingestion assets; the change log's and the
    quarantine's metadata in one dict (``received``, ``loaded``, ``reason/...``)."""
    metadata = ingest_and_stage(database, zone, selection=INGESTION)
    return metadata["crm/change_log"] | metadata["crm/quarantine"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The simulation ingested once for the module, into a file (module fixtures start
    before ``state_backend``); each test gets a copy (``conn``)."""
    root = tmp_path_factory.mktemp("end_to_end")
    zone = LandingZone(root / "landing").ensure()
    summary = simulate_history(zone, CONFIG)
    return root, summary, ingest(root / "revorch.duckdb", zone)


@pytest.fixture
def conn(built, db_path, tmp_path):
    """This test's copy of the ingested state store and its landing zone; on DuckLake
    (``state_backend``) the copy is this test's lake, where the test's runs write."""
    root = built[0]
    shutil.copyfile(root / "revorch.duckdb", db_path)
    shutil.copytree(root / "landing", tmp_path / "landing", dirs_exist_ok=True)
    into_this_lake(db_path)
    connection = CrmHome(db_path.parent).connect()  # the file db_path, or this test's lake
    yield connection
    connection.close()


@pytest.fixture
def ingested(built):
    _, summary, result = built
    return summary, result


def test_every_simulated_line_is_loaded_counted_as_duplicate_or_quarantined(conn, ingested):
    summary, result = ingested
    assert result["received"] == summary.lines
    assert result["loaded"] == summary.events
    assert result["duplicates"] == summary.expected_duplicates
    assert result["quarantined"] == summary.malformed
    reasons = {k.removeprefix("reason/"): v for k, v in result.items() if k.startswith("reason/")}
    assert reasons == summary.malformed_by_reason
    assert len(summary.malformed_by_reason) == 11  # every malformed kind is exercised


def test_simulated_crm_fills_every_table(conn, ingested):
    for _object_type, table in conn.execute("SELECT * FROM object_types").fetchall():
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert rows > 0, table
    # Malformed lines replace some valid ones, so expect the contacts the valid lines name.
    lines = history_frame(CONFIG)
    expected = set(
        lines.filter(pl.col("malformed").is_null() & (pl.col("object_type") == "contact"))[
            "object_id"
        ]
    )
    contacts = {row[0] for row in conn.execute("SELECT id FROM contacts").fetchall()}
    assert contacts == expected
    assert len(contacts) > 0.9 * CONFIG.contacts
    orphans = conn.execute(
        "SELECT count(*) FROM deals WHERE company_id NOT IN (SELECT id FROM companies)"
    ).fetchone()[0]
    assert orphans == 0


def test_ingesting_the_same_simulation_again_changes_nothing(conn, db_path, zone, ingested):
    before = {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
        for t in ("contacts", "deals", "subscriptions")
    }
    summary = simulate_history(zone, CONFIG)
    again = ingest(db_path, zone)
    assert (again["loaded"], again["quarantined"]) == (0, 0)
    assert again["duplicates"] == summary.lines
    after = {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall()
        for t in ("contacts", "deals", "subscriptions")
    }
    assert after == before
