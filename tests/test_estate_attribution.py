"""Attribution from the real connectors (docs/estate.md, "Attribution"): a change a HubSpot
workflow makes, pushed by HubSpot's webhook, and changes a Salesforce integration and a flow's
own user make, read from Change Data Capture and the REST poller, land with who made them in
``source``, and the estate audit credits each to its automation and to no other."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from conftest import ingest_and_stage, read_state
from resources import StateStore
from revorch.estate.inventory import import_inventory
from revorch.estate.report import estate_report
from revorch.landing import LandingZone
from revorch.sources.hubspot.mapping import change_source as hubspot_source
from revorch.sources.salesforce.mapping import change_source as salesforce_source
from salesforce_fakes import change_event
from test_salesforce import (  # noqa: F401 (fixtures)
    at,
    contact,
    org,
    pubsub,
    subscriber,
)
from test_webhooks import hubspot_event, now_ms, post_hubspot, serving

AUDITED = (
    dg.AssetSelection.groups("ingestion", "crm_state")
    | dg.AssetSelection.assets(["stages", "contact_lifecycle"], ["metrics", "automation_estate"])
).without_checks()

WORKFLOW = "585051946"
HUBSPOT_FLOWS = {
    "results": [
        {
            "id": WORKFLOW,
            "name": "Engaged leads to MQL",
            "isEnabled": True,
            "objectTypeId": "0-1",
            "actions": [{"fields": {"property_name": "lifecyclestage"}}],
        },
        {"id": "585051947", "name": "Never fires", "isEnabled": True, "objectTypeId": "0-1"},
    ]
}


def _estate(database: Path) -> dict[str, tuple[int, int]]:
    with read_state(database) as conn:
        rows = conn.execute(
            "SELECT automation_id, changes, records_touched FROM metrics.automation_estate"
        ).fetchall()
    return {automation: (changes, records) for automation, changes, records in rows}


def test_the_sources_name_who_made_a_change():
    assert hubspot_source("AUTOMATION_PLATFORM", "585051946") == "hubspot:585051946"
    assert hubspot_source("INTEGRATION", 31234) == "hubspot:INTEGRATION:31234"
    assert hubspot_source("CRM_UI", None) == hubspot_source(None, None) == "hubspot"
    origin = "com/salesforce/api/rest/62.0;client=zapier-router"
    assert salesforce_source(origin, "005A") == "salesforce:client:zapier-router"
    ui = "com/salesforce/api/soap/59.0;client=SfdcInternalAPI/"
    assert salesforce_source(ui, "005A") == salesforce_source("", "005A") == "salesforce:user:005A"
    assert salesforce_source(None, None) == "salesforce"


def test_a_hubspot_workflows_change_pushed_by_webhook_is_credited_to_that_workflow(tmp_path):
    zone = LandingZone(tmp_path / "landing")
    database = tmp_path / "revorch.duckdb"
    start = now_ms() - 120_000
    events = [
        hubspot_event("contact.creation", 101, start, 1),
        hubspot_event(
            "contact.propertyChange",
            101,
            start + 1,
            2,
            propertyName="lifecyclestage",
            propertyValue="lead",
            changeSource="CRM_UI",
            sourceId="userId:7",
        ),
        hubspot_event(
            "contact.propertyChange",
            101,
            start + 60_000,
            3,
            propertyName="lifecyclestage",
            propertyValue="marketingqualifiedlead",
            changeSource="AUTOMATION_PLATFORM",
            sourceId=WORKFLOW,
        ),
    ]
    with serving(zone.root) as base_url:
        assert post_hubspot(base_url, events).status_code == 200
    ingest_and_stage(database, zone, selection=AUDITED)
    inventory = tmp_path / "flows.json"
    inventory.write_text(json.dumps(HUBSPOT_FLOWS))
    with StateStore.configured(database).get_connection() as conn:
        import_inventory(conn, inventory, "hubspot")  # the audit's views read it at once

    with read_state(database) as conn:
        sources = conn.execute(
            "SELECT properties->>'lifecycle_stage', source FROM change_log "
            "WHERE properties->>'lifecycle_stage' IS NOT NULL ORDER BY occurred_at"
        ).fetchall()
        text = estate_report(conn)
    assert sources == [
        ("lead", "hubspot:CRM_UI:userId:7"),
        ("marketingqualifiedlead", f"hubspot:{WORKFLOW}"),
    ]
    assert _estate(database) == {f"hubspot:{WORKFLOW}": (1, 1), "hubspot:585051947": (0, 0)}
    assert f"hubspot:{WORKFLOW}  Engaged leads to MQL\n     1 changes on 1 records" in text


def test_salesforce_changes_are_credited_to_the_integration_and_the_flow_user(
    org,  # noqa: F811 (the fixtures of test_salesforce)
    pubsub,  # noqa: F811
    tmp_path,
):
    servicer, address = pubsub
    zone = LandingZone(tmp_path / "landing")
    database = tmp_path / "revorch.duckdb"
    zap_client, flow_user = "zapier-lead-router", "005xx00000FLOWUSER"
    a, b = "003xx00000AAAAAAAA", "003xx00000BBBBBBBB"
    # A zap, calling the REST API with its own client id, sets a lead source (CDC).
    servicer.publish(
        change_event(
            "UPDATE",
            [a],
            at(3),
            origin=f"com/salesforce/api/rest/59.0;client={zap_client}",
            changed=["LeadSource"],
            LeadSource="Partner",
        )
    )
    # A scheduled flow runs as its own user and sets a title (CDC: no client, its user).
    update = change_event("UPDATE", [b], at(4), origin=" ", changed=["Title"], Title="VP")
    update["ChangeEventHeader"]["commitUser"] = flow_user
    servicer.publish(update)
    # The REST poller reads the same flow's newer edit of another record: its last modifier.
    org.records["Contact"] = [contact("003xx00000CCCCCCCC", 5, LastModifiedById=flow_user)]
    now = [at(10)]
    cdc = subscriber(org, address, tmp_path, now)
    assert cdc.run(idle_seconds=1.0, max_seconds=60).landed == 2
    cdc.poller.poll()

    inventory = tmp_path / "automations.csv"
    inventory.write_text(
        "id,name,platform,trigger,object_type,fields_written,enabled,source_key\n"
        f"z1,Lead router,zapier,new lead,contact,lead_source,true,salesforce:client:{zap_client}\n"
        f"f1,Title fixer,salesforce,scheduled,contact,job_title,true,salesforce:user:{flow_user}\n"
    )
    ingest_and_stage(database, zone, selection=AUDITED)
    with StateStore.configured(database).get_connection() as conn:
        import_inventory(conn, inventory, "csv")

    estate = _estate(database)
    assert estate["zapier:z1"] == (1, 1)
    assert estate["salesforce:f1"] == (2, 2)  # one change event, one polled record


def test_a_hubspot_workflows_change_read_by_the_poller_is_credited_to_that_workflow(tmp_path):
    from fake_hubspot import FakeHubSpot, Portal
    from revorch.sources.hubspot.api import HubSpotApi, Limits
    from revorch.sources.hubspot.own_writes import OwnWrites
    from revorch.sources.hubspot.poller import PollSettings, poll

    zone = LandingZone(tmp_path / "landing")
    database = tmp_path / "revorch.duckdb"
    portal = Portal("pat-test")
    start = now_ms() - 3_600_000
    for n in (101, 102):
        portal.add("contacts", str(n), start + n, email=f"c{n}@acme.example", lifecyclestage="lead")
    portal.modify(
        "contacts",
        "101",
        changed_by=("AUTOMATION_PLATFORM", WORKFLOW),
        lifecyclestage="marketingqualifiedlead",
    )
    portal.modify("contacts", "102", changed_by=("CRM_UI", "userId:7"), firstname="Bo")
    limits = Limits(requests_per_10s=10_000, searches_per_second=1_000)
    with FakeHubSpot(portal) as hubspot:
        poll(
            HubSpotApi("pat-test", hubspot.url, limits),
            zone,
            tmp_path / "cursor.json",
            OwnWrites(tmp_path / "own.sqlite"),
            PollSettings(objects=("contacts",), owners=False),
        )
    ingest_and_stage(database, zone, selection=AUDITED)
    inventory = tmp_path / "flows.json"
    inventory.write_text(json.dumps(HUBSPOT_FLOWS))
    with StateStore.configured(database).get_connection() as conn:
        import_inventory(conn, inventory, "hubspot")
        sources = dict(conn.execute("SELECT object_id, source FROM change_log").fetchall())
    assert sources == {"101": f"hubspot:{WORKFLOW}", "102": "hubspot:CRM_UI:userId:7"}
    assert _estate(database) == {f"hubspot:{WORKFLOW}": (1, 1), "hubspot:585051947": (0, 0)}
