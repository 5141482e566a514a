"""HubSpot against a portal served on 127.0.0.1 (tests/fake_hubspot.py): the poller pages past
the search API's 10,000-result cap, resumes after kill -9 from its cursor without loss or
double effect, honours a 429's Retry-After, lands archived records as deletes and
associations as references; the write-back happens once and is never read back in."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from hubspot.crm.objects import ApiException

from conftest import ingest_and_stage, read_state
from fake_hubspot import FakeHubSpot, Portal, iso
from resources import DispatcherResource, LandingZoneResource, StateStore
from resources.hubspot import HubSpotResource
from revorch.definitions import materialize
from revorch.governance.dispatch import dispatch
from revorch.governance.policy import load_policy
from revorch.landing import LandingZone
from revorch.sources.hubspot.api import HubSpotApi, Limits
from revorch.sources.hubspot.mapping import MARKER
from revorch.sources.hubspot.own_writes import OwnWrites
from revorch.sources.hubspot.poller import PollSettings, poll
from revorch.sources.hubspot.webhook import to_landing_events
from revorch.sources.hubspot.writeback import HubSpotTarget

TOKEN = "pat-test"
BASE = 1_750_000_000_000  # 2025-06-15, in epoch milliseconds
FAST = Limits(requests_per_10s=10_000, searches_per_second=1_000)
INGEST = dg.AssetSelection.groups("ingestion", "crm_state").without_checks()
SEARCH_CONTACTS = "/crm/v3/objects/contacts/search"


def api_for(hubspot: FakeHubSpot, limits: Limits = FAST) -> HubSpotApi:
    return HubSpotApi(TOKEN, hubspot.url, limits)


def landed(zone: LandingZone) -> list[dict]:
    return [
        json.loads(line)
        for batch in zone.pending()
        for line in batch.read_text().splitlines()
        if line
    ]


def ingest(tmp_path: Path, zone: LandingZone) -> duckdb.DuckDBPyConnection:
    database = tmp_path / "revorch.duckdb"
    materialize(INGEST, database=database, landing=zone.root)
    return read_state(database)


def small_portal() -> Portal:
    """Two companies, three contacts, a deal, an owner; the associations HubSpot would hold."""
    portal = Portal(TOKEN)
    portal.owners.append(
        {
            "id": "11",
            "email": "ada@seller.example",
            "firstName": "Ada",
            "lastName": "Seller",
            "userId": 1,
            "createdAt": "2025-01-01T00:00:00Z",
            "updatedAt": "2025-01-01T00:00:00Z",
            "archived": False,
            "type": "PERSON",
        }
    )
    portal.add("companies", "5001", BASE, name="Acme", domain="acme.example", hubspot_owner_id="11")
    portal.add("companies", "5002", BASE + 1, name="Globex", numberofemployees="250")
    for n, stage in ((101, "lead"), (102, "marketingqualifiedlead"), (103, "lead")):
        portal.add(
            "contacts",
            str(n),
            BASE + n,
            email=f"c{n}@acme.example",
            firstname=f"C{n}",
            lifecyclestage=stage,
            hs_lead_status="NEW",
            hubspot_owner_id="11",
            region="emea",
        )
    portal.associate("contacts", "101", "companies", "5002", 279)  # unlabeled
    portal.associate("contacts", "101", "companies", "5001", 1)  # primary
    portal.associate("contacts", "102", "companies", "5002", 1)
    portal.add(
        "deals",
        "7001",
        BASE + 200,
        dealname="Acme renewal",
        dealstage="contractsent",
        amount="12000.5",
        closedate="2025-07-01T00:00:00.000Z",
        dealtype="newbusiness",
        hubspot_owner_id="11",
    )
    portal.associate("deals", "7001", "companies", "5001", 5)
    portal.associate("deals", "7001", "contacts", "101", 3)
    return portal


def test_the_poller_pages_past_the_10000_result_cap_and_lands_each_record_once(tmp_path):
    portal = Portal(TOKEN)
    # 10,200 contacts; the 40 around the 10,000th share one instant, so the query restarts
    # from a timestamp that records already taken also carry.
    for n in range(10_200):
        modified = BASE + (10_000 if 9_980 <= n < 10_020 else n) * 10
        portal.add("contacts", str(n + 1), modified, email=f"c{n}@x.example")
    zone = LandingZone(tmp_path / "landing")
    settings = PollSettings(objects=("contacts",), owners=False, flush_pages=25)
    with FakeHubSpot(portal) as hubspot:
        api = api_for(hubspot)
        # The cap is real: asking for results past the 10,000th is a 400, as at HubSpot.
        with pytest.raises(ApiException) as past_cap:
            api.search(
                "contacts",
                properties=[],
                filters=[],
                sort_property="lastmodifieddate",
                after="10000",
            )
        assert past_cap.value.status == 400
        report = poll(api, zone, tmp_path / "cursor.json", OwnWrites(tmp_path / "own.db"), settings)

    events = landed(zone)
    ids = [e["object_id"] for e in events]
    assert len(ids) == 10_200 and set(ids) == {str(n) for n in range(1, 10_201)}
    assert len({e["event_id"] for e in events}) == 10_200
    assert report.counts["contact/windows"] >= 1
    assert portal.count("POST", SEARCH_CONTACTS, 400) == 1  # only the probe above
    # The second window started at the newest instant of the first, not from the beginning.
    windows = [b for _, b in portal.searches if not b.get("after")]
    assert int(windows[-1]["filterGroups"][0]["filters"][0]["value"]) > BASE
    cursor = json.loads((tmp_path / "cursor.json").read_text())
    assert cursor["objects"]["contacts"]["since_ms"] == BASE + 10_199 * 10


def test_a_429_is_waited_out_and_the_search_sent_again(tmp_path):
    portal = small_portal()
    portal.rate_limit_searches = 1
    zone = LandingZone(tmp_path / "landing")
    with FakeHubSpot(portal) as hubspot:
        report = poll(api_for(hubspot), zone, tmp_path / "cursor.json", OwnWrites(tmp_path / "o"))
    assert portal.count("POST", SEARCH_CONTACTS, 429) == 1
    assert portal.count("POST", SEARCH_CONTACTS, 200) >= 1
    assert report.counts["contact/upserts"] == 3


def test_archived_records_end_deleted_and_associations_become_references(tmp_path):
    portal = small_portal()
    zone = LandingZone(tmp_path / "landing")
    with FakeHubSpot(portal) as hubspot:
        api = api_for(hubspot)
        custom = PollSettings(extra_properties={"contacts": ("region",)})
        poll(api, zone, tmp_path / "cursor.json", OwnWrites(tmp_path / "o"), custom)
        portal.archive("contacts", "103", int(time.time() * 1000))
        portal.modify("contacts", "102", lifecyclestage="salesqualifiedlead")
        again = poll(api, zone, tmp_path / "cursor.json", OwnWrites(tmp_path / "o"))
    assert again.counts["contact/deletes"] == 1

    conn = ingest(tmp_path, zone)
    contacts = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, company_id, owner_id, lifecycle_stage, lead_status, _deleted FROM contacts"
        ).fetchall()
    }
    # The primary company, not the smallest id; lead status lower case as Revorch keeps it.
    assert contacts["101"] == ("5001", "11", "lead", "new", False)
    assert contacts["102"] == ("5002", "11", "salesqualifiedlead", "new", False)
    assert contacts["103"][-1] is True
    deal = conn.execute(
        "SELECT company_id, contact_id, stage, amount, close_date, deal_type FROM deals"
    ).fetchone()
    assert deal == (
        "5001",
        "101",
        "contractsent",
        12000.5,
        datetime(2025, 7, 1).date(),
        "new_business",
    )
    assert conn.execute("SELECT email, first_name FROM owners WHERE id = '11'").fetchone() == (
        "ada@seller.example",
        "Ada",
    )
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    # A property Revorch has no column for is kept in the change log, as HubSpot sent it.
    assert conn.execute(
        "SELECT properties->>'region' FROM change_log WHERE object_id = '101'"
    ).fetchall() == [("emea",)]


def test_the_dagster_job_polls_into_the_landing_zone(tmp_path):
    from orch_assets.sources.hubspot import poll_hubspot

    with FakeHubSpot(small_portal()) as hubspot:
        result = poll_hubspot.execute_in_process(
            resources={
                "hubspot": HubSpotResource(
                    access_token=TOKEN,
                    base_url=hubspot.url,
                    state_dir=str(tmp_path / "hubspot"),
                    searches_per_second=100,
                ),
                "landing_zone": LandingZoneResource(path=str(tmp_path / "landing")),
            }
        )
    assert result.success
    assert {e["object_id"] for e in landed(LandingZone(tmp_path / "landing"))} >= {"101", "7001"}
    assert (tmp_path / "hubspot" / "cursor.json").exists()


@pytest.mark.slow
def test_a_poll_killed_with_sigkill_resumes_from_its_cursor_without_loss_or_double_effect(
    tmp_path,
):
    portal = Portal(TOKEN)
    for n in range(3_000):
        portal.add("contacts", str(n + 1), BASE + n * 1000, email=f"c{n}@x.example")
    portal.search_delay = 0.05  # so the kill lands while pages are still being read
    home = tmp_path / "home"
    with FakeHubSpot(portal) as hubspot:
        env = {
            **os.environ,
            "REVORCH_HOME": str(home),
            "HUBSPOT_ACCESS_TOKEN": TOKEN,
            "REVORCH_HUBSPOT_BASE_URL": hubspot.url,
            "REVORCH_HUBSPOT_SEARCHES_PER_SECOND": "1000",
            "REVORCH_HUBSPOT_REQUESTS_PER_10S": "10000",
        }
        command = [sys.executable, "-m", "revorch.cli", "poll", "hubspot"]
        victim = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 120
            # Killed after two flushes (10 pages each) and before the 30th page.
            while len(portal.searches) < 24 and time.monotonic() < deadline:
                assert victim.poll() is None, victim.communicate()
                time.sleep(0.01)
            os.killpg(victim.pid, signal.SIGKILL)
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        assert victim.returncode == -signal.SIGKILL
        cursor = json.loads((home / "hubspot" / "cursor.json").read_text())
        resumed_from = cursor["objects"]["contacts"]["since_ms"]
        assert BASE < resumed_from < BASE + 2_999 * 1000  # part of the way
        searches_before = len(portal.searches)
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
    # The second run started from the cursor (less its lookback), not from the beginning.
    second_start = portal.searches[searches_before][1]["filterGroups"][0]["filters"][0]["value"]
    assert int(second_start) >= resumed_from - 60_000

    zone = LandingZone(home / "landing")
    conn = ingest(tmp_path, zone)
    rows, records = conn.execute(
        "SELECT count(*), count(DISTINCT object_id) FROM change_log WHERE object_type = 'contact'"
    ).fetchone()
    assert rows == records == 3_000  # nothing lost, nothing counted twice
    received, loaded, duplicates = conn.execute(
        "SELECT sum(received), sum(loaded), sum(duplicates) FROM landing_batches"
    ).fetchone()
    assert loaded == 3_000 and received == loaded + duplicates


def insert_action(conn, action_id: str, action_type: str, source: str, payload: dict) -> None:
    facts = {
        "tier": "offline",
        "confidence": 0.95,
        "amount": None,
        "risk_score": 0.1,
        "discount_pct": None,
        "account_tier": "smb",
        "customer_age_days": 400,
        "customer_facing": False,
        "is_customer": False,
        "model_written": False,
    }
    now = datetime.now(UTC)
    conn.execute(
        "INSERT INTO governance.actions (action_id, action_type, source, entity_type, entity_id,"
        " company_id, reason, payload, facts, proposed_at, status, updated_at)"
        " VALUES (?, ?, ?, 'contact', '101', '5001', 'test', ?, ?, ?, 'ready', ?)",
        [action_id, action_type, source, json.dumps(payload), json.dumps(facts), now, now],
    )


def test_a_write_back_happens_once_and_is_not_read_back_in(tmp_path):
    portal = small_portal()
    zone = LandingZone(tmp_path / "landing")
    own = OwnWrites(tmp_path / "hubspot" / "own-writes.sqlite3")
    store = StateStore.configured(tmp_path / "revorch.duckdb")
    policy = load_policy()
    with FakeHubSpot(portal) as hubspot:
        api = api_for(hubspot)
        poll(api, zone, tmp_path / "cursor.json", own)
        ingest(tmp_path, zone).close()
        with store.get_connection() as conn:
            to = {"role": "crm", "owner_id": "11"}
            insert_action(
                conn,
                "a-disqualify",
                "update_crm_field",
                "lead_qualification",
                {"field": "lead_status", "value": "unqualified", "to": to},
            )
            insert_action(
                conn, "a-escalate", "notify_manager", "handoff/sla_escalations", {"to": to}
            )

        def run_dispatch(target):
            return dispatch(
                store.get_connection,
                policy,
                target,
                journal_path=tmp_path / "journal.sqlite3",
                run_id="test",
                anchor_path=tmp_path / "anchors.jsonl",
            )

        # The dispatcher's resource picks this target, as a dry run unless told otherwise.
        outbox = str(tmp_path / "outbox.jsonl")
        chosen = DispatcherResource(outbox_path=outbox, dispatch_target="hubspot")
        assert isinstance(chosen.target(), HubSpotTarget) and chosen.target().dry_run

        # Dry run, the default: the plan is written down, HubSpot is not called.
        run_dispatch(HubSpotTarget(api, own, dry_run_path=tmp_path / "dry-run.jsonl"))
        plans = [json.loads(x) for x in (tmp_path / "dry-run.jsonl").read_text().splitlines()]
        assert sorted(p["action_id"] for p in plans) == ["a-disqualify", "a-escalate"]
        assert portal.count("PATCH", "/crm/v3/objects") == 0
        assert portal.count("POST", "/crm/v3/objects/tasks") == 0

        writer = HubSpotApi(TOKEN, hubspot.url, FAST, retry_reads=False)
        live = HubSpotTarget(writer, own, dry_run=False)
        with store.get_connection() as conn:  # as if the dry run had not been sent
            conn.execute("UPDATE governance.actions SET status = 'ready'")
        first = run_dispatch(live)
        assert first.outcomes["sent"] == 2
        contact = portal.records["contacts"]["101"]["properties"]
        assert contact["hs_lead_status"] == "UNQUALIFIED"
        assert sorted(contact[MARKER].split(";")) == ["a-disqualify", "a-escalate"]
        tasks = list(portal.records["tasks"].values())
        assert len(tasks) == 1 and "a-escalate" in tasks[0]["properties"]["hs_task_subject"]
        assert tasks[0]["associations"][0]["to"] == {"id": "101"}

        # A crash after the writes left both actions 'sending'; their ledger is lost too.
        with store.get_connection() as conn:
            conn.execute("UPDATE governance.actions SET status = 'sending'")
        own.path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{own.path}{suffix}").unlink(missing_ok=True)
        patches = portal.count("PATCH", "/crm/v3/objects/contacts/101")
        again = run_dispatch(HubSpotTarget(writer, own, dry_run=False))
        assert again.outcomes["sent"] == 2
        # The disqualification found its marker on the record; the task found itself.
        assert portal.count("PATCH", "/crm/v3/objects/contacts/101") == patches
        assert len(portal.records["tasks"]) == 1
        assert run_dispatch(live).outcomes == {}  # nothing due

        # The next poll sees contact 101 changed (by Revorch) and leaves Revorch's writes out.
        poll(api, zone, tmp_path / "cursor.json", own)

    conn = ingest(tmp_path, zone)
    assert conn.execute("SELECT lead_status FROM contacts WHERE id = '101'").fetchone() == ("new",)
    echoed = conn.execute(
        "SELECT count(*) FROM change_log WHERE object_id = '101'"
        " AND ((properties->>'lead_status') = 'unqualified'"
        " OR (properties->>'revorch_action_id') IS NOT NULL)"
    ).fetchone()
    assert echoed == (0,)
    # The poll did read the record after the write (its event is there, without our fields).
    assert conn.execute(
        "SELECT count(*) FROM change_log WHERE object_id = '101' AND object_type = 'contact'"
    ).fetchone() == (2,)


def test_requests_count_against_the_rate_limit_before_they_are_sent():
    with FakeHubSpot(small_portal()) as hubspot:
        api = HubSpotApi(TOKEN, hubspot.url, Limits(requests_per_10s=3, searches_per_second=100))
        for _ in range(2):
            api.get("contacts", "101", ["email"])
        # Two of the three requests allowed per 10 seconds are spent: one more may go now,
        # the one after it would have to wait.
        assert api._requests.try_acquire("request", blocking=False)
        assert not api._requests.try_acquire("request", blocking=False)
    assert hubspot.portal.count("GET", "/crm/v3/objects/contacts/101") == 2


def _won_deal_stages(tmp_path: Path, name: str, *, pushed: bool) -> dict:
    """small_portal's deal won a day after BASE, polled (HubSpot's closedate on the record) or
    pushed (a webhook's stage change after a poll of the open deal); what the stages made."""
    portal = small_portal()
    zone = LandingZone(tmp_path / name / "landing")
    closed_ms = BASE + 86_400_000
    if not pushed:
        # Won before the first poll: HubSpot set closedate when the deal entered closedwon.
        deal = portal.records["deals"]["7001"]
        deal["properties"] |= {
            "dealstage": "closedwon",
            "closedate": iso(closed_ms),
            "hs_lastmodifieddate": iso(closed_ms + 60_000),
        }
        deal["modified_ms"] = closed_ms + 60_000
    with FakeHubSpot(portal) as hubspot:
        poll(api_for(hubspot), zone, tmp_path / name / "cursor.json", OwnWrites(tmp_path / "o"))
    if pushed:
        change = {
            "eventId": 1,
            "subscriptionType": "deal.propertyChange",
            "portalId": 33,
            "occurredAt": closed_ms,
            "attemptNumber": 0,
            "objectId": 7001,
            "propertyName": "dealstage",
            "propertyValue": "closedwon",
        }
        zone.write_events("hubspot", to_landing_events([change]).events)
    database = tmp_path / name / "revorch.duckdb"
    ingest_and_stage(database, zone)
    with read_state(database) as conn:
        return {
            "closed_at": conn.execute("SELECT closed_at FROM deals").fetchall(),
            "onboarding": conn.execute(
                "SELECT deal_id, company_id, started_at FROM stages.onboarding"
            ).fetchall(),
            "contact_101": conn.execute(
                "SELECT stage FROM stages.entity_stages WHERE entity_id = '101'"
            ).fetchall(),
        }


def test_a_polled_won_deal_reaches_the_customer_and_onboarding_stages_as_a_pushed_one_does(
    tmp_path, own_lake
):
    closed = datetime.fromtimestamp((BASE + 86_400_000) / 1000, UTC)
    polled = _won_deal_stages(tmp_path, "polled", pushed=False)
    with own_lake(tmp_path / "pushed-lake"):  # not the polled deal's state
        pushed = _won_deal_stages(tmp_path, "pushed", pushed=True)
    assert pushed["closed_at"] == [(closed,)]
    assert polled == pushed
    assert polled["onboarding"] == [("7001", "5001", closed)]
    assert polled["contact_101"] == [("customer",)]


def test_tickets_are_polled_by_default_with_their_status_priority_and_primary_company(tmp_path):
    portal = small_portal()
    closed_ms = BASE + 5_000
    portal.add(
        "tickets",
        "9001",
        closed_ms,
        subject="Cannot log in",
        content="Since the update",
        hs_pipeline_stage="4",  # Closed, in HubSpot's default support pipeline
        hs_ticket_priority="HIGH",
        closed_date=iso(closed_ms),
        hubspot_owner_id="11",
    )
    portal.add("tickets", "9002", BASE + 6_000, subject="Invoice copy", hs_pipeline_stage="1")
    portal.associate("tickets", "9001", "companies", "5001", 339)  # unlabeled, smaller id
    portal.associate("tickets", "9001", "companies", "5002", 26)  # primary
    portal.associate("tickets", "9001", "contacts", "101", 16)
    zone = LandingZone(tmp_path / "landing")
    with FakeHubSpot(portal) as hubspot:
        report = poll(api_for(hubspot), zone, tmp_path / "cursor.json", OwnWrites(tmp_path / "o"))
    assert report.counts["ticket/upserts"] == 2

    conn = ingest(tmp_path, zone)
    tickets = conn.execute(
        "SELECT id, company_id, contact_id, owner_id, subject, body, priority, status, closed_at "
        "FROM tickets ORDER BY id"
    ).fetchall()
    assert tickets == [
        (
            "9001",
            "5002",
            "101",
            "11",
            "Cannot log in",
            "Since the update",
            "high",
            "closed",
            datetime.fromtimestamp(closed_ms / 1000, UTC),
        ),
        ("9002", None, None, None, "Invoice copy", None, None, "new", None),
    ]
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)


def test_the_polled_object_types_come_from_the_environment(monkeypatch):
    from revorch.sources.hubspot import config

    assert config.poll_settings().objects == ("contacts", "companies", "deals", "tickets")
    monkeypatch.setenv("REVORCH_HUBSPOT_OBJECTS", "contacts, deals")
    assert config.poll_settings().objects == ("contacts", "deals")
    monkeypatch.setenv("REVORCH_HUBSPOT_OBJECTS", "contacts,calls")
    with pytest.raises(ValueError, match="calls not one of"):
        config.poll_settings()


@pytest.mark.parametrize("setting, reads_history", [("", True), ("false", False)])
def test_attribution_switched_off_in_the_environment_asks_for_no_property_history(
    tmp_path, monkeypatch, setting, reads_history
):
    from orch_assets.sources.hubspot import poll_hubspot

    monkeypatch.setenv("REVORCH_HUBSPOT_ATTRIBUTION", setting)
    with FakeHubSpot(small_portal()) as hubspot:
        # As the resource is built for a deployment: every setting from its default.
        resource = HubSpotResource(
            access_token=TOKEN, base_url=hubspot.url, state_dir=str(tmp_path / "hubspot")
        )
        result = poll_hubspot.execute_in_process(
            resources={
                "hubspot": resource,
                "landing_zone": LandingZoneResource(path=str(tmp_path / "landing")),
            }
        )
        history_reads = sum(
            hubspot.portal.count("POST", f"/crm/v3/objects/{kind}/batch/read")
            for kind in ("contacts", "companies", "deals", "tickets")
        )
    assert result.success
    assert resource.attribution is reads_history
    # The property history is the poller's only batch read (propertiesWithHistory).
    assert (history_reads > 0) is reads_history
    events = landed(LandingZone(tmp_path / "landing"))
    assert {e["object_id"] for e in events} >= {"101", "102", "5001", "7001"}
    assert all(("source" in e) is reads_history for e in events if e["object_id"] == "101")
    monkeypatch.setenv("REVORCH_HUBSPOT_ATTRIBUTION", "nope")
    with pytest.raises(ValueError, match="must be true or false"):
        HubSpotResource(access_token=TOKEN)


def test_the_ledger_is_opened_once_for_reads_and_sees_later_writes(tmp_path, monkeypatch):
    """The webhook receiver reads the ledger on every request: one connection, not one per
    read, and still every write the dispatcher commits later, or a ledger started afresh."""
    import sqlite3

    path = tmp_path / "own-writes.sqlite3"
    reader, dispatcher = OwnWrites(path), OwnWrites(path)
    assert reader.written("contacts", ["1"]) == {}  # no write-back yet, no file
    dispatcher.record("contacts", "1", 10, "a1", {"hs_lead_status": "UNQUALIFIED"})
    opened = []
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or connect(*a, **k))
    for _ in range(5):
        assert reader.written("contacts", ["1"]) == {"1": {"hs_lead_status": "UNQUALIFIED"}}
    assert len(opened) == 1
    dispatcher.record("contacts", "1", 20, "a2", {"hs_lead_status": "OPEN"})
    assert reader.written("contacts", ["1"]) == {"1": {"hs_lead_status": "OPEN"}}
    for stale in tmp_path.glob("own-writes.sqlite3*"):  # the state folder reset
        stale.unlink()
    OwnWrites(path).record("contacts", "2", 30, "a3", {"hubspot_owner_id": "11"})
    assert reader.written("contacts", ["1", "2"]) == {"2": {"hubspot_owner_id": "11"}}
