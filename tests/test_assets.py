"""The ingestion assets, materialized for real by Dagster on a real DuckDB file."""

from __future__ import annotations

import json

import dagster as dg
import duckdb

from conftest import event
from orch_assets.ingestion.assets import (
    CHANGE_LOG,
    CURRENT_STATE_TABLES,
    QUARANTINE,
    crm_change_log,
    crm_current_state,
)
from resources import LandingZoneResource, StateStore


def _materialize(zone, db_path, instance):
    return dg.materialize(
        [crm_change_log, crm_current_state],
        resources={
            "state_store": StateStore(database=str(db_path)),
            "landing_zone": LandingZoneResource(path=str(zone.root)),
        },
        instance=instance,
    )


def _metadata(result, key):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_materializing_ingests_and_reports_counts(zone, db_path):
    zone.write_lines(
        "test",
        [
            json.dumps(event("e-1", "company", "co-1", "2026-01-01T00:00:00Z", name="Acme")),
            json.dumps(event("e-2", "contact", "c-1", "2026-01-01T00:00:00Z", company_id="co-1")),
            json.dumps(event("e-2", "contact", "c-1", "2026-01-01T00:00:00Z", company_id="co-1")),
            "{not json",
        ],
    )
    with dg.instance_for_test() as instance:
        result = _materialize(zone, db_path, instance)
        assert result.success
        log_meta = _metadata(result, CHANGE_LOG)
        assert {k: log_meta[k] for k in ("received", "loaded", "duplicates", "quarantined")} == {
            "received": 4,
            "loaded": 2,
            "duplicates": 1,
            "quarantined": 1,
        }
        assert _metadata(result, QUARANTINE)["reason/invalid_json"] == 1
        contacts_meta = _metadata(result, dg.AssetKey(["crm", "contacts"]))
        assert contacts_meta["dagster/row_count"] == 1

        # Nothing new waiting: a second run changes nothing and says so.
        again = _materialize(zone, db_path, instance)
        assert _metadata(again, CHANGE_LOG)["received"] == 0
        assert _metadata(again, dg.AssetKey(["crm", "contacts"]))["records_rebuilt"] == 0

        materialized = {
            key
            for key in instance.get_asset_keys()
            if instance.get_latest_materialization_event(key)
        }
        expected = {CHANGE_LOG, QUARANTINE} | {
            dg.AssetKey(["crm", t]) for t in CURRENT_STATE_TABLES
        }
        assert expected <= materialized

    with duckdb.connect(str(db_path), read_only=True) as conn:
        assert conn.execute("SELECT id, company_id FROM contacts").fetchall() == [("c-1", "co-1")]
