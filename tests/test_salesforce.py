"""Salesforce as a source, against an org on 127.0.0.1: the REST poller (SOQL on
SystemModstamp with nextRecordsUrl paging, the deleted-records resource) and the Change Data
Capture subscriber (a real gRPC server speaking the published pubsub_api.proto, Avro
payloads), landed and ingested through the real asset graph."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from simple_salesforce import Salesforce

from conftest import ingest_and_stage, read_state
from resources import StateStore
from revorch.landing import LandingZone
from revorch.sources.salesforce import (
    ChangeEventSubscriber,
    CursorFile,
    PubSubAuth,
    SalesforcePoller,
    pubsub_channel,
)
from salesforce_fakes import (
    ORG_ID,
    TOKEN,
    FakePubSub,
    FakeRestOrg,
    change_event,
    sf_time,
    start_pubsub,
)

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
INGEST = dg.AssetSelection.groups("ingestion", "crm_state").without_checks()
OWNER = "005xx000001Sv6AAAS"
ACME = "001xx000003DGb1AAG"


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def contact(record_id: str, minutes: float, **fields) -> dict:
    return {
        "Id": record_id,
        "SystemModstamp": sf_time(at(minutes)),
        "CreatedDate": sf_time(T0),
        "AccountId": ACME,
        "OwnerId": OWNER,
        "FirstName": "Ada",
        "LastName": record_id[-4:],
        "Email": f"{record_id.lower()}@acme.example",
        "LeadSource": "Web",
        "Level__c": "Primary",
        "LastModifiedDate": sf_time(at(minutes)),
    } | fields


@pytest.fixture
def org(tmp_path: Path):
    org = FakeRestOrg(tmp_path, page_size=2)
    org.records = {
        "User": [
            {
                "Id": OWNER,
                "SystemModstamp": sf_time(T0),
                "Email": "ae@acme.example",
                "FirstName": "Grace",
                "LastName": "Hopper",
                "IsActive": True,
                "CreatedDate": sf_time(T0),
            }
        ],
        "Account": [
            {
                "Id": ACME,
                "SystemModstamp": sf_time(T0),
                "Name": "Acme",
                "Website": "https://www.acme.example/",
                "NumberOfEmployees": 120,
                "AnnualRevenue": 5e6,
                "OwnerId": OWNER,
                "CreatedDate": sf_time(T0),
            }
        ],
        "Contact": [contact(f"003xx00000{n}AAAA", n) for n in range(1, 6)],
        "Lead": [
            {
                "Id": "00Qxx000001LeadAAA",
                "SystemModstamp": sf_time(at(1)),
                "FirstName": "Lin",
                "LastName": "Lee",
                "Company": "Lee Ltd",
                "Status": "Closed - Not Converted",
                "IsConverted": False,
                "OwnerId": "00Gxx000000QueueAA",
                "CreatedDate": sf_time(T0),
            },
        ],
        "Opportunity": [
            {
                "Id": "006xx000001OppAAAA",
                "SystemModstamp": sf_time(at(2)),
                "Name": "Acme - New",
                "AccountId": ACME,
                "OwnerId": OWNER,
                "StageName": "Closed Won",
                "IsClosed": True,
                "Type": "New Customer",
                "Amount": 24000.0,
                "CloseDate": "2026-03-02",
                "CreatedDate": sf_time(T0),
            },
        ],
        "Task": [],
    }
    yield org
    org.close()


def client(org: FakeRestOrg) -> Salesforce:
    return Salesforce(instance_url=org.url, session_id=TOKEN, session=org.session())


def poller(org: FakeRestOrg, home: Path, now: list[dt.datetime]) -> SalesforcePoller:
    return SalesforcePoller(
        client(org),
        LandingZone(home / "landing").ensure(),
        CursorFile(home / "salesforce-rest.json"),
        now=lambda: now[0],
    )


def state(database: Path, sql: str) -> list[tuple]:
    with read_state(database) as conn:
        return conn.execute(sql).fetchall()


def test_poller_lands_changes_and_deletes_and_resumes_from_its_cursor(org, tmp_path):
    zone = LandingZone(tmp_path / "landing")
    database = tmp_path / "revorch.duckdb"
    now = [at(10)]
    first = poller(org, tmp_path, now).poll()
    assert first.changed == {
        "User": 1,
        "Account": 1,
        "Contact": 5,
        "Lead": 1,
        "Opportunity": 1,
        "Task": 0,
    }
    # Five contacts, two to a page: the query went on through nextRecordsUrl.
    assert len(zone.pending()) == first.batches == 5
    ingest_and_stage(database, zone, selection=INGEST)
    assert state(database, "SELECT count(*) FROM contacts WHERE NOT _deleted") == [(6,)]
    assert state(
        database,
        "SELECT company_id, owner_id, email, lead_source FROM contacts WHERE id = '003xx000001AAAA'",
    ) == [(ACME, OWNER, "003xx000001aaaa@acme.example", "Web")]
    assert state(
        database, "SELECT lead_status, owner_id FROM contacts WHERE id = '00Qxx000001LeadAAA'"
    ) == [("unqualified", None)]
    assert state(database, "SELECT domain, employees FROM companies") == [("acme.example", 120)]
    assert state(database, "SELECT stage, deal_type, amount, closed_at::VARCHAR FROM deals") == [
        ("closedwon", "new_business", 24000.0, "2026-03-02 00:00:00+00")
    ]
    # Unmapped fields are kept as custom properties in the change log.
    assert state(
        database,
        "SELECT properties->>'Level__c' FROM change_log WHERE object_id = '003xx000001AAAA'",
    ) == [("Primary",)]

    # In Salesforce: one contact changes, one is deleted, the lead is converted.
    org.records["Contact"][1] |= {"Email": "new@acme.example", "SystemModstamp": sf_time(at(12))}
    org.records["Contact"] = [r for r in org.records["Contact"] if r["Id"] != "003xx000003AAAA"]
    org.deleted.append(("Contact", "003xx000003AAAA", at(13)))
    org.records["Lead"][0] |= {
        "IsConverted": True,
        "Status": "Closed - Converted",
        "SystemModstamp": sf_time(at(14)),
    }
    now[0] = at(20)
    org.queries.clear()
    second = poller(org, tmp_path, now).poll()  # a new poller: only the cursor file carries over
    assert second.changed["Contact"] == 1 and second.changed["Lead"] == 1
    assert second.deleted["Contact"] == 1
    contact_query = next(q for q in org.queries if "FROM Contact" in q)
    assert "SystemModstamp > 2026-03-02T09:05:00Z" in contact_query
    ingest_and_stage(database, zone, selection=INGEST)
    assert state(database, "SELECT email FROM contacts WHERE id = '003xx000002AAAA'") == [
        ("new@acme.example",)
    ]
    assert state(database, "SELECT id FROM contacts WHERE _deleted ORDER BY id") == [
        ("003xx000003AAAA",),
        ("00Qxx000001LeadAAA",),
    ]

    # Polled again with nothing new: nothing is landed, and the deletes are asked for from
    # where the last answer's coverage ended.
    now[0] = at(30)
    third = poller(org, tmp_path, now).poll()
    assert (sum(third.changed.values()), sum(third.deleted.values()), zone.pending()) == (0, 0, [])
    assert org.deleted_calls[-1][:2] == ("Task", "2026-03-02T09:20:00+00:00")
    assert state(database, "SELECT count(*), count(DISTINCT event_id) FROM change_log") == [
        (12, 12)
    ]


@pytest.fixture
def pubsub():
    servicer = FakePubSub()
    server, address = start_pubsub(servicer)
    yield servicer, address
    server.stop(0)


def subscriber(org, address, home: Path, now) -> ChangeEventSubscriber:
    return ChangeEventSubscriber(
        pubsub_channel(address, tls=False),
        PubSubAuth(access_token=TOKEN, instance_url=org.url, tenant_id=ORG_ID),
        LandingZone(home / "landing").ensure(),
        CursorFile(home / "salesforce-cdc.json"),
        poller(org, home, now),
        first_start="EARLIEST",
        batch_size=2,
    )


def test_cdc_resumes_from_its_replay_id_rereads_gaps_and_skips_its_own_writes(
    org, pubsub, tmp_path
):
    servicer, address = pubsub
    zone = LandingZone(tmp_path / "landing")
    database = tmp_path / "revorch.duckdb"
    now = [at(10)]
    a, b, c = "003xx00000AAAAAAAA", "003xx00000BBBBBBBB", "003xx00000CCCCCCCC"
    for record_id in (b, c):
        servicer.publish(
            change_event(
                "CREATE",
                [record_id],
                at(1),
                Email=f"{record_id}@acme.example",
                AccountId=ACME,
                OwnerId=OWNER,
                Name={"FirstName": "Bo", "LastName": record_id[-4:], "Salutation": None},
                CreatedDate=int(at(1).timestamp() * 1000),
            )
        )
    servicer.publish(
        change_event(
            "CREATE",
            [a],
            at(2),
            Email="a@acme.example",
            AccountId=ACME,
            OwnerId=OWNER,
            Title="CTO",
            Name={"Salutation": None, "FirstName": "Ada", "LastName": "Lovelace"},
            CreatedDate=int(at(2).timestamp() * 1000),
            Level__c="Primary",
        )
    )
    servicer.publish(
        change_event(
            "UPDATE",
            [a],
            at(3),
            changed=["Email", "Name.LastName", "LastModifiedDate"],
            nulled=["Title"],
            Email="ada@acme.example",
            Name={"Salutation": None, "FirstName": None, "LastName": "King"},
            LastModifiedDate=int(at(3).timestamp() * 1000),
        )
    )
    # Revorch's own write-back, echoed by CDC: skipped.
    servicer.publish(
        change_event(
            "UPDATE",
            [a],
            at(4),
            origin="com/salesforce/api/rest/59.0;client=revorch",
            changed=["Title"],
            Title="Written by Revorch",
        )
    )
    # A gap: no field values, the record is read again through REST.
    org.records["Contact"].append(contact(b, 5, Email="gap@acme.example", FirstName="Bo"))
    servicer.publish(change_event("GAP_UPDATE", [b], at(5)))

    first = subscriber(org, address, tmp_path, now).run(idle_seconds=1.0, max_seconds=60)
    assert (first.received, first.skipped_own, first.reread) == (6, 1, 1)
    assert servicer.first_requests[0].replay_preset == 1  # EARLIEST, nothing stored yet
    assert any(f"Id IN ('{b}')" in q for q in org.queries)
    assert {m["instanceurl"] for m in servicer.metadata} == {org.url}
    stored = json.loads((tmp_path / "salesforce-cdc.json").read_text())["replay_id"]
    assert stored == servicer.events[-1][0].hex()
    before_crash = tmp_path / "cursor-after-first-run.json"
    shutil.copy(tmp_path / "salesforce-cdc.json", before_crash)

    # Salesforce goes on while the subscriber is down: a delete, and an update of two records.
    servicer.publish(change_event("DELETE", [c], at(6)))
    servicer.publish(
        change_event(
            "UPDATE",
            [a, b],
            at(7),
            changed=["LeadSource"],
            LeadSource="Partner",
        )
    )
    second = subscriber(org, address, tmp_path, now).run(idle_seconds=1.0, max_seconds=60)
    assert servicer.first_requests[1].replay_preset == 2  # CUSTOM
    assert servicer.first_requests[1].replay_id.hex() == stored
    assert (second.received, second.landed) == (2, 3)

    ingest_and_stage(database, zone, selection=INGEST)
    assert state(
        database, f"SELECT email, last_name, job_title, lead_source FROM contacts WHERE id = '{a}'"
    ) == [("ada@acme.example", "King", None, "Partner")]
    assert state(database, f"SELECT email, lead_source FROM contacts WHERE id = '{b}'") == [
        ("gap@acme.example", "Partner")
    ]
    assert state(database, "SELECT id FROM contacts WHERE _deleted") == [(c,)]
    assert state(
        database,
        "SELECT count(*) FROM change_log WHERE properties->>'job_title' = 'Written by Revorch'",
    ) == [(0,)]
    loaded = state(database, "SELECT count(*) FROM change_log")

    # A crash after landing and before the replay id was stored: the events come again, with
    # the same ids, and change nothing.
    shutil.copy(before_crash, tmp_path / "salesforce-cdc.json")
    again = subscriber(org, address, tmp_path, now).run(idle_seconds=1.0, max_seconds=60)
    assert again.received == 2
    ingest_and_stage(database, zone, selection=INGEST)
    assert state(database, "SELECT count(*) FROM change_log") == loaded
    assert state(
        database,
        "SELECT loaded, duplicates FROM landing_batches ORDER BY ingested_at DESC, batch_id LIMIT 1",
    ) == [(0, 3)]


def test_dagster_job_and_command_read_their_credentials_from_the_environment(
    org, pubsub, tmp_path, monkeypatch
):
    from orch_assets.sources.salesforce import salesforce_sync
    from resources import LandingZoneResource, SalesforceResource

    env = {
        "SALESFORCE_INSTANCE_URL": org.url,
        "SALESFORCE_ACCESS_TOKEN": TOKEN,
        "REQUESTS_CA_BUNDLE": str(org.cert),  # the org's self-signed certificate
        "REVORCH_HOME": str(tmp_path / "home"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    landing = tmp_path / "home" / "landing"
    result = salesforce_sync.execute_in_process(
        resources={
            "salesforce": SalesforceResource(
                instance_url=dg.EnvVar("SALESFORCE_INSTANCE_URL"),
                access_token=dg.EnvVar("SALESFORCE_ACCESS_TOKEN"),
                cursor_folder=str(tmp_path / "home" / "sources"),
            ),
            "landing_zone": LandingZoneResource(path=str(landing)),
        }
    )
    assert result.success
    output = next(e for e in result.all_events if e.is_successful_output)
    assert output.event_specific_data.metadata["changed"].value == 9
    assert len(LandingZone(landing).pending()) == 5

    # The command continues from the job's cursors: only the new change comes. Then it
    # subscribes to change events from the newest on, asking the org for its id first.
    org.records["Contact"][0] |= {"Title": "CFO", "SystemModstamp": sf_time(at(40))}
    org.records["Organization"] = [{"Id": ORG_ID, "SystemModstamp": sf_time(T0)}]
    servicer, address = pubsub
    newest = servicer.publish(change_event("DELETE", ["003xx000001AAAA"], at(39)))
    cdc = {"SALESFORCE_PUBSUB_ENDPOINT": address, "SALESFORCE_PUBSUB_TLS": "false"}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("revorch")),
            "poll",
            "salesforce",
            "--cdc",
            "60",
            "--idle",
            "1",
        ],
        env=os.environ | env | cdc,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Contact 1," in done.stdout and "User 0" in done.stdout
    assert "CDC: 0 events" in done.stdout  # LATEST: what was published before is not replayed
    assert servicer.first_requests[0].replay_preset == 0
    cursor = json.loads((tmp_path / "home" / "sources" / "salesforce-cdc.json").read_text())
    assert cursor["replay_id"] == newest.hex()  # from the keepalive: the next start is there
    assert len(LandingZone(landing).pending()) == 6


def test_write_back_happens_once_and_its_change_event_is_not_read_back(
    org, pubsub, tmp_path, monkeypatch
):
    from resources import DispatcherResource

    servicer, address = pubsub
    org.change_events = servicer
    contact_id = org.records["Contact"][0]["Id"]
    lead_id = org.records["Lead"][0]["Id"]
    follow_up = {
        "action_id": "act-0001",
        "action_type": "send_follow_up",
        "source": "lead_qualification",
        "decision_id": "dec-1",
        "entity_type": "contact",
        "entity_id": contact_id,
        "company_id": ACME,
        "reason": "lead_qualification recommends accelerate_follow_up",
        "payload": {"to": {"role": "owner", "owner_id": OWNER}, "cadence": "2 days"},
        "approved_by": "sam",
        "proposed_at": T0.isoformat(),
    }
    disqualify = follow_up | {
        "action_id": "act-0002",
        "action_type": "update_crm_field",
        "entity_id": lead_id,
        "payload": {"to": {"role": "crm"}, "field": "lead_status", "value": "unqualified"},
    }

    # Dry run (the default): the requests go to the outbox file, none to Salesforce.
    outbox = tmp_path / "outbox.jsonl"
    assert DispatcherResource(outbox_path=str(outbox)).target().name == "outbox"
    dispatcher = DispatcherResource(outbox_path=str(outbox), dispatch_target="salesforce")
    dry = dispatcher.target().deliver([follow_up])
    assert dry[0].ok and org.writes == []
    assert json.loads(outbox.read_text())["salesforce_request"][0] == "Task"

    monkeypatch.setenv("SALESFORCE_INSTANCE_URL", org.url)
    monkeypatch.setenv("SALESFORCE_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(org.cert))
    live = DispatcherResource(
        outbox_path=str(outbox), dispatch_target="salesforce", writeback="live"
    ).target()
    # The dispatcher sends an action again after a crash: still one Task.
    for _ in range(2):
        assert [d.ok for d in live.deliver([follow_up, disqualify])] == [True, True]
    tasks = [t for t in org.records["Task"] if t.get("Revorch_Action_Id__c") == "act-0001"]
    assert len(tasks) == 1 and tasks[0]["WhoId"] == contact_id and tasks[0]["OwnerId"] == OWNER
    assert org.records["Lead"][0]["Status"] == "Closed - Not Converted"
    assert {options for *_, options in org.writes} == {"client=revorch"}

    # Near the org's daily API allowance, write-back waits (the dispatcher retries later).
    org.api_usage = (14_000, 15_000)
    assert live.deliver([follow_up])[0].ok  # this answer tells the client the usage
    held = live.deliver([follow_up])[0]
    assert (held.ok, held.retryable) == (False, True)

    # Salesforce sends a change event for each of those writes; none is landed.
    now = [at(10)]
    echoed = subscriber(org, address, tmp_path, now).run(idle_seconds=1.0, max_seconds=60)
    assert (echoed.received, echoed.skipped_own, echoed.landed) == (5, 5, 0)
    assert LandingZone(tmp_path / "landing").pending() == []


def test_the_dispatcher_writes_each_allowed_action_to_salesforce_once(
    org, copy_crm, tmp_path, monkeypatch
):
    """The whole governance graph on the shared simulated CRM, with the Salesforce write-back as
    its target: what the policy allows (or a person approved) is written, once; what waits for
    approval is not."""
    from orch_assets.governance.assets import dispatched_actions, governance_assets
    from resources import AgentsConfigResource, DispatcherResource, GovernanceResource
    from revorch.agents import config as agents_config
    from revorch.governance.policy import DEFAULT_PATH

    home = copy_crm("decided")
    monkeypatch.setenv("SALESFORCE_INSTANCE_URL", org.url)
    monkeypatch.setenv("SALESFORCE_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(org.cert))
    resources = {
        "state_store": StateStore.configured(home.database),
        "governance": GovernanceResource(
            policy_path=str(DEFAULT_PATH), audit_anchor_path=str(home.anchor)
        ),
        "dispatcher": DispatcherResource(
            outbox_path=str(home.outbox), dispatch_target="salesforce", writeback="live"
        ),
        "agents": AgentsConfigResource(path=str(agents_config.DEFAULT_PATH)),
    }
    with dg.instance_for_test() as instance:
        assert dg.materialize(governance_assets, resources=resources, instance=instance).success
        written = {key for sobject, key, *_ in org.writes if sobject == "Task"}
        by_status: dict[str, set[str]] = {}
        for action_id, status in state(
            home.database, "SELECT action_id, status FROM governance.actions"
        ):
            by_status.setdefault(status, set()).add(action_id)
        assert len(by_status["sent"]) > 50 and written == by_status["sent"]
        unsent = set().union(*(ids for status, ids in by_status.items() if status != "sent"))
        assert unsent and not unsent & written  # waiting for a person, or forbidden
        writes = len(org.writes)
        # Dispatching again sends nothing twice.
        assert dg.materialize(
            [dispatched_actions],
            resources=resources,
            instance=instance,
            selection=[dispatched_actions.key],
        ).success
        assert len(org.writes) == writes


@pytest.mark.slow
def test_a_poll_killed_with_sigkill_resumes_from_its_cursor_without_loss_or_double_effect(
    tmp_path,
):
    org = FakeRestOrg(tmp_path, page_size=200)
    contacts = 5_000  # three landing batches of 2,000 at most
    org.records = {
        "Contact": [
            {
                "Id": f"003xx{n:013d}",
                "SystemModstamp": sf_time(T0 + dt.timedelta(seconds=n // 3)),  # ties, by Id
                "LastName": f"C{n}",
                "Email": f"c{n}@acme.example",
            }
            for n in range(contacts)
        ]
    }
    org.delay = 0.05  # so the kill lands while pages are still being read
    home = tmp_path / "home"
    cursor_file = home / "sources" / "salesforce-rest.json"
    env = os.environ | {
        "SALESFORCE_INSTANCE_URL": org.url,
        "SALESFORCE_ACCESS_TOKEN": TOKEN,
        "SALESFORCE_OBJECTS": "Contact",
        "REQUESTS_CA_BUNDLE": str(org.cert),
        "REVORCH_HOME": str(home),
    }
    command = [sys.executable, "-m", "revorch.cli", "poll", "salesforce"]
    try:
        victim = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 120
            # Killed once the first batch is landed and the cursor moved past it.
            while not cursor_file.exists() and time.monotonic() < deadline:
                assert victim.poll() is None, victim.communicate()
                time.sleep(0.01)
            os.killpg(victim.pid, signal.SIGKILL)
        finally:
            if victim.poll() is None:
                os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        assert victim.returncode == -signal.SIGKILL
        resumed_from = json.loads(cursor_file.read_text())["Contact"]
        assert resumed_from["id"] < org.records["Contact"][-1]["Id"]  # part of the way
        org.queries.clear()
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr
    finally:
        org.close()
    # The second run asked for what came after the cursor, not for everything.
    assert f"Id > '{resumed_from['id']}'" in org.queries[0]

    zone = LandingZone(home / "landing")
    database = tmp_path / "revorch.duckdb"
    ingest_and_stage(database, zone, selection=INGEST)
    assert state(
        database,
        "SELECT count(*), count(DISTINCT object_id) FROM change_log WHERE object_type = 'contact'",
    ) == [(contacts, contacts)]  # nothing lost, nothing counted twice
    assert state(database, "SELECT count(*) FROM contacts WHERE NOT _deleted") == [(contacts,)]
    [(received, loaded, duplicates)] = state(
        database, "SELECT sum(received), sum(loaded), sum(duplicates) FROM landing_batches"
    )
    assert loaded == contacts and received == loaded + duplicates
