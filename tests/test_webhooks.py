"""The webhook receiver (`revorch serve`), run for real with uvicorn on 127.0.0.1.

HubSpot signatures are computed here independently, as HubSpot's docs describe v3 (the
receiver uses the SDK's check); Standard Webhooks signatures likewise follow the spec.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import httpx
import pytest

from conftest import ingest_and_stage, read_state, serving_app
from fake_hubspot import FakeHubSpot, Portal
from revorch.landing import LandingZone
from revorch.server.app import create_app
from revorch.server.webhooks import ReceiverSettings
from revorch.sources.hubspot import webhook as hubspot
from revorch.sources.hubspot.api import HubSpotApi, Limits
from revorch.sources.hubspot.mapping import MARKER
from revorch.sources.hubspot.own_writes import OwnWrites
from revorch.sources.hubspot.writeback import HubSpotTarget

CLIENT_SECRET = "8f3b0a5e-6a2c-4c1e-9d2f-5b7e1c0a9d31"
TOKEN = "pat-test"
BILLING_KEY = b"billing-secret-key-32-bytes-long"
BILLING_SECRET = "whsec_" + base64.b64encode(BILLING_KEY).decode()
MAX_BODY = 64 * 1024
# Ingestion, current state and the contacts' lifecycle: enough to see a stage move.
THROUGH_LIFECYCLE = (
    dg.AssetSelection.groups("ingestion", "crm_state")
    | dg.AssetSelection.assets(["stages", "contact_lifecycle"])
).without_checks()


@contextmanager
def serving(landing: Path, **overrides) -> Iterator[str]:
    """The real service on 127.0.0.1 and a free port, in a thread; yields its base URL."""
    config = ReceiverSettings(
        landing=landing,
        hubspot_client_secret=CLIENT_SECRET,
        source_secrets={"billing": BILLING_SECRET},
        max_body_bytes=MAX_BODY,
        **overrides,
    )
    with serving_app(create_app(config)) as url:
        yield url


@pytest.fixture
def zone(tmp_path: Path) -> LandingZone:
    return LandingZone(tmp_path / "landing")


@pytest.fixture
def base_url(zone: LandingZone) -> Iterator[str]:
    with serving(zone.root) as url:
        yield url


def now_ms() -> int:
    return int(time.time() * 1000)


def hubspot_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """HubSpot's v3 signature: base64(HMAC-SHA256(secret, method + URI + body + timestamp))."""
    message = method.encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def post_hubspot(
    base_url: str,
    events: object,
    *,
    secret: str = CLIENT_SECRET,
    timestamp: int | None = None,
    body: bytes | None = None,
    signed_body: bytes | None = None,
) -> httpx.Response:
    url = f"{base_url}/webhooks/hubspot"
    body = json.dumps(events).encode() if body is None else body
    stamp = str(now_ms() if timestamp is None else timestamp)
    signature = hubspot_signature(secret, "POST", url, signed_body or body, stamp)
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": stamp,
    }
    return httpx.post(url, content=body, headers=headers, timeout=30)


def post_standard(
    base_url: str,
    source: str,
    events: object,
    *,
    key: bytes = BILLING_KEY,
    timestamp: int | None = None,
    body: bytes | None = None,
) -> httpx.Response:
    """Signed as the Standard Webhooks spec says: v1,base64(HMAC-SHA256(key, id.ts.body))."""
    body = json.dumps(events).encode() if body is None else body
    msg_id = "msg_" + hashlib.md5(body).hexdigest()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "Content-Type": "application/json",
    }
    return httpx.post(f"{base_url}/webhooks/{source}", content=body, headers=headers, timeout=30)


def hubspot_event(subscription: str, object_id: int, at: int, event_id: int, **fields) -> dict:
    return {
        "eventId": event_id,
        "subscriptionId": 25,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": at,
        "subscriptionType": subscription,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
        **fields,
    }


def landed_lines(zone: LandingZone) -> list[dict]:
    return [json.loads(line) for path in zone.pending() for line in path.read_text().splitlines()]


def health(base_url: str) -> dict:
    return httpx.get(f"{base_url}/health", timeout=30).json()


def test_a_signed_hubspot_batch_lands_and_moves_a_contacts_stage(
    zone: LandingZone, base_url: str, tmp_path: Path
) -> None:
    database = tmp_path / "revorch.duckdb"
    start = now_ms() - 60_000
    first = [
        hubspot_event("company.creation", 501, start, 1),
        hubspot_event("contact.creation", 101, start + 1, 2),
        hubspot_event(
            "contact.propertyChange",
            101,
            start + 2,
            3,
            propertyName="lifecyclestage",
            propertyValue="lead",
        ),
        hubspot_event(
            "contact.associationChange",
            101,
            start + 3,
            4,
            fromObjectId=101,
            toObjectId=501,
            associationType="CONTACT_TO_COMPANY",
            associationRemoved=False,
            isPrimaryAssociation=True,
        ),
        hubspot_event(
            "contact.propertyChange",
            101,
            start + 4,
            5,
            propertyName="favourite_colour",
            propertyValue="teal",
        ),
        hubspot_event("line_item.creation", 9, start + 5, 6),  # not a Revorch object: skipped
    ]
    response = post_hubspot(base_url, first)
    assert response.status_code == 200, response.text
    assert response.json()["landed"] == 5 and response.json()["skipped"] == 1
    ingest_and_stage(database, zone, selection=THROUGH_LIFECYCLE)

    moved = [
        hubspot_event(
            "contact.propertyChange",
            101,
            start + 10_000,
            7,
            propertyName="lifecyclestage",
            propertyValue="marketingqualifiedlead",
        )
    ]
    assert post_hubspot(base_url, moved).status_code == 200
    ingest_and_stage(database, zone, selection=THROUGH_LIFECYCLE)

    with read_state(database) as conn:
        contact = conn.execute(
            "SELECT lifecycle_stage, company_id FROM contacts WHERE id = '101'"
        ).fetchone()
        stages = conn.execute(
            "SELECT to_stage FROM stages.stage_transitions WHERE entity_id = '101' ORDER BY seq"
        ).fetchall()
        custom = conn.execute(
            "SELECT value FROM property_history WHERE object_id = '101' "
            "AND property = 'favourite_colour'"
        ).fetchall()
    assert contact == ("marketingqualifiedlead", "501")
    assert [stage for (stage,) in stages][-2:] == ["lead", "mql"]
    assert custom == [("teal",)]


@pytest.mark.parametrize(
    ("request_kind", "reason"),
    [
        ("wrong_secret", "invalid_signature"),
        ("tampered_body", "invalid_signature"),
        ("stale", "stale_timestamp"),
        ("unsigned", "missing_signature"),
    ],
)
def test_forged_and_stale_hubspot_requests_land_nothing(
    zone: LandingZone, base_url: str, request_kind: str, reason: str
) -> None:
    events = [
        hubspot_event(
            "contact.propertyChange",
            101,
            now_ms(),
            1,
            propertyName="lifecyclestage",
            propertyValue="customer",
        )
    ]
    body = json.dumps(events).encode()
    if request_kind == "wrong_secret":
        response = post_hubspot(base_url, events, secret="not-the-client-secret")
    elif request_kind == "tampered_body":
        forged = body.replace(b"customer", b"evangelist")
        response = post_hubspot(base_url, events, body=forged, signed_body=body)
    elif request_kind == "stale":  # correctly signed, six minutes ago
        response = post_hubspot(base_url, events, timestamp=now_ms() - 6 * 60 * 1000)
    else:
        response = httpx.post(f"{base_url}/webhooks/hubspot", content=body, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"] == reason
    assert zone.pending() == []
    assert health(base_url)["refused_requests"] == {f"hubspot:{reason}": 1}


def test_the_same_event_delivered_three_times_has_one_effect(
    zone: LandingZone, base_url: str, tmp_path: Path
) -> None:
    database = tmp_path / "revorch.duckdb"
    change = hubspot_event(
        "deal.propertyChange",
        7001,
        now_ms() - 5_000,
        42,
        propertyName="dealstage",
        propertyValue="closedwon",
    )
    for attempt in range(3):
        assert post_hubspot(base_url, [{**change, "attemptNumber": attempt}]).status_code == 200
    assert len(landed_lines(zone)) == 3

    ingest_and_stage(database, zone, selection=THROUGH_LIFECYCLE)
    with read_state(database) as conn:
        changes = conn.execute(
            "SELECT count(*) FROM change_log WHERE object_id = '7001'"
        ).fetchone()[0]
        received, loaded, duplicates = conn.execute(
            "SELECT sum(received), sum(loaded), sum(duplicates) FROM landing_batches"
        ).fetchone()
        deal = conn.execute("SELECT stage, closed_at IS NOT NULL FROM deals").fetchall()
    assert changes == 1
    assert (received, loaded, duplicates) == (3, 1, 2)
    assert deal == [("closedwon", True)]


def test_a_different_change_with_the_same_event_id_is_not_a_duplicate() -> None:
    at = now_ms()
    one = hubspot_event("contact.propertyChange", 1, at, 5, propertyName="email", propertyValue="a")
    other = {**one, "objectId": 2}
    retried = {**one, "attemptNumber": 4}
    assert hubspot.event_id(one) == hubspot.event_id(retried)
    assert hubspot.event_id(one) != hubspot.event_id(other)


def test_hubspot_values_are_mapped_to_revorchs_columns() -> None:
    at = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    events = [
        hubspot_event(
            "contact.propertyChange",
            1,
            at,
            1,
            propertyName="hs_lead_status",
            propertyValue="BAD_TIMING",
        ),
        hubspot_event(
            "contact.propertyChange", 1, at, 2, propertyName="jobtitle", propertyValue=""
        ),
        hubspot_event(
            "deal.propertyChange", 2, at, 3, propertyName="closedate", propertyValue="1767312000000"
        ),
        hubspot_event(
            "deal.propertyChange",
            2,
            at,
            4,
            propertyName="dealstage",
            propertyValue="qualifiedtobuy",
        ),
        hubspot_event("company.deletion", 3, at, 5),
        hubspot_event(
            "deal.associationChange",
            2,
            at,
            6,
            fromObjectId=3,
            toObjectId=2,
            associationType="COMPANY_TO_DEAL",
            associationRemoved=True,
        ),
        hubspot_event(
            "object.propertyChange",
            4,
            at,
            7,
            objectTypeId="0-3",
            propertyName="amount",
            propertyValue="1200.50",
        ),
        hubspot_event("object.creation", 5, at, 8, objectTypeId="0-421"),  # a custom object
    ]
    mapped = hubspot.to_landing_events(events).events
    assert len(mapped) == len(events) - 1
    assert [e["properties"] for e in mapped if e["op"] == "upsert"] == [
        {"lead_status": "bad_timing"},
        {"job_title": None},  # HubSpot clears a property with an empty value
        {"close_date": "2026-01-02"},
        {"stage": "qualifiedtobuy", "closed_at": None},
        {"company_id": None},
        {"amount": "1200.50"},
    ]
    assert (mapped[6]["object_type"], mapped[6]["object_id"]) == ("deal", "4")
    assert mapped[4] == {
        "event_id": hubspot.event_id(events[4]),
        "object_type": "company",
        "object_id": "3",
        "occurred_at": "2026-01-01T00:00:00.000Z",
        "op": "delete",
        "source": "hubspot",
    }
    # A removal is dated just before an addition HubSpot makes at the same instant.
    assert (mapped[5]["object_type"], mapped[5]["object_id"]) == ("deal", "2")
    assert mapped[5]["occurred_at"] == "2025-12-31T23:59:59.999Z"


def test_generic_association_events_map_as_the_legacy_ones_do() -> None:
    """`object.associationChange` names the records' types and the association by id: the
    primary company and a deal's contact are kept, other company links and labels are not."""
    at = 1_767_225_600_000  # 2026-01-01T00:00:00Z

    def association(n: int, from_type: str, from_id: int, to_type: str, to_id: int, **fields):
        fields = {"associationCategory": "HUBSPOT_DEFINED", "associationRemoved": False, **fields}
        return hubspot_event(
            "object.associationChange",
            from_id,
            at,
            n,
            fromObjectTypeId=from_type,
            fromObjectId=from_id,
            toObjectTypeId=to_type,
            toObjectId=to_id,
            **fields,
        )

    events = [
        association(1, "0-1", 101, "0-2", 5001, associationTypeId=1),  # primary company
        association(2, "0-2", 5001, "0-1", 101, associationTypeId=2),  # its other side
        association(3, "0-1", 101, "0-2", 5002, associationTypeId=279),  # another company
        association(4, "0-3", 7001, "0-1", 101, associationTypeId=3),  # a deal's contact
        association(5, "0-2", 5001, "0-3", 7001, associationTypeId=6, associationRemoved=True),
        association(6, "0-5", 9001, "0-2", 5001, associationTypeId=26),  # a ticket's company
        association(
            7, "0-1", 101, "0-2", 5003, associationTypeId=7, associationCategory="USER_DEFINED"
        ),
        association(8, "0-1", 101, "0-48", 3, associationTypeId=193),  # a call
    ]
    mapped = hubspot.to_landing_events(events)
    assert mapped.skipped == 3
    assert [(e["object_type"], e["object_id"], e["properties"]) for e in mapped.events] == [
        ("contact", "101", {"company_id": "5001"}),
        ("contact", "101", {"company_id": "5001"}),
        ("deal", "7001", {"contact_id": "101"}),
        ("deal", "7001", {"company_id": None}),
        ("ticket", "9001", {"company_id": "5001"}),
    ]
    # Both sides of one change are two events; a retry of either is the same event again.
    ids = [e["event_id"] for e in mapped.events]
    assert len(set(ids)) == len(ids)
    retried = hubspot.to_landing_events([{**events[0], "attemptNumber": 3}]).events
    assert retried[0]["event_id"] == ids[0]
    with pytest.raises(hubspot.MalformedEvent, match="associationTypeId"):
        hubspot.to_landing_events([{**events[0], "associationTypeId": None}])


def test_a_write_backs_own_change_delivered_as_a_webhook_lands_nothing(
    zone: LandingZone, tmp_path: Path
) -> None:
    """HubSpot pushes Revorch's own write back as property changes: they land nothing, as the
    poller leaves them out; a person's later change of the same property is news again."""
    own = OwnWrites(tmp_path / "hubspot" / "own-writes.sqlite3")
    portal = Portal(TOKEN)
    portal.add("contacts", "101", now_ms() - 60_000, hs_lead_status="NEW")
    action = {
        "action_id": "a-disqualify",
        "action_type": "update_crm_field",
        "entity_type": "contact",
        "entity_id": "101",
        "payload": {"field": "lead_status", "value": "unqualified"},
    }
    with FakeHubSpot(portal) as crm:
        api = HubSpotApi(TOKEN, crm.url, Limits(10_000, 1_000), retry_reads=False)
        assert HubSpotTarget(api, own, dry_run=False).deliver([action])[0].ok
    written = portal.records["contacts"]["101"]["properties"]
    assert written["hs_lead_status"] == "UNQUALIFIED"
    at = now_ms()
    # What HubSpot sends for that one PATCH: a change of each property it wrote.
    echoes = [
        hubspot_event("contact.propertyChange", 101, at, n, propertyName=name, propertyValue=value)
        for n, name in enumerate(("hs_lead_status", "revorch_last_action", MARKER), start=1)
        for value in [written[name]]
    ]
    person = hubspot_event(
        "contact.propertyChange",
        101,
        at + 5_000,
        9,
        propertyName="hs_lead_status",
        propertyValue="OPEN",
    )
    with serving(zone.root, hubspot_own_writes=own.path) as url:
        echoed = post_hubspot(url, echoes)
        assert echoed.status_code == 200, echoed.text
        assert echoed.json()["landed"] == 0 and echoed.json()["skipped"] == 3
        assert landed_lines(zone) == []
        assert post_hubspot(url, [person]).json()["landed"] == 1
    assert [line["properties"] for line in landed_lines(zone)] == [{"lead_status": "open"}]


def test_standard_webhooks_source_is_accepted_when_signed(zone: LandingZone, base_url: str) -> None:
    events = [
        {
            "event_id": "billing:inv-1",
            "object_type": "subscription",
            "object_id": "sub-1",
            "occurred_at": "2026-03-01T09:30:00Z",
            "properties": {"plan": "pro", "seats": 12},
        },
        {
            "event_id": "billing:inv-2",
            "object_type": "subscription",
            "object_id": "sub-2",
            "occurred_at": "2026-03-01T09:31:00+02:00",
            "op": "delete",
        },
    ]
    response = post_standard(base_url, "billing", events)
    assert response.status_code == 200, response.text
    assert response.json()["landed"] == 2
    # Its batch was in incoming/ before the answer was sent.
    assert (zone.incoming_dir / f"{response.json()['batch_id']}.ndjson").exists()
    single = post_standard(base_url, "billing", {**events[0], "event_id": "billing:inv-3"})
    assert single.status_code == 200
    landed = landed_lines(zone)
    assert [e["event_id"] for e in landed] == ["billing:inv-1", "billing:inv-2", "billing:inv-3"]
    assert {e["source"] for e in landed} == {"billing"}


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("wrong_key", 401, "invalid_signature"),
        ("stale", 401, "stale_timestamp"),
        ("unknown_source", 404, "unknown_source"),
        ("missing_event_id", 422, "malformed_event"),
        ("no_time_zone", 422, "malformed_event"),
        ("other_source", 422, "malformed_event"),
        ("unknown_field", 422, "malformed_event"),
    ],
)
def test_standard_webhooks_refusals_land_nothing(
    zone: LandingZone, base_url: str, kind: str, status: int, reason: str
) -> None:
    good = {
        "event_id": "billing:1",
        "object_type": "subscription",
        "object_id": "sub-1",
        "occurred_at": "2026-03-01T09:30:00Z",
        "properties": {},
    }
    source, event, options = "billing", dict(good), {}
    if kind == "wrong_key":
        options["key"] = b"someone-else-s-key"
    elif kind == "stale":
        options["timestamp"] = int(time.time()) - 6 * 60
    elif kind == "unknown_source":
        source = "payroll"
    elif kind == "missing_event_id":
        del event["event_id"]
    elif kind == "no_time_zone":
        event["occurred_at"] = "2026-03-01T09:30:00"
    elif kind == "other_source":
        event["source"] = "hubspot"
    else:
        event["operation"] = "upsert"
    response = post_standard(base_url, source, [event], **options)
    assert (response.status_code, response.json()["error"]) == (status, reason)
    assert zone.pending() == []
    counted_as = "unknown" if kind == "unknown_source" else "billing"
    assert health(base_url)["refused_requests"] == {f"{counted_as}:{reason}": 1}


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"[" + b'{"eventId":1},' * 6000 + b"{}]", 413, "body_too_large"),
        (b"not json", 400, "invalid_json"),
        (b'[{"eventId":1,"eventId":2}]', 400, "invalid_json"),
        (b'[{"amount":NaN}]', 400, "invalid_json"),
        (b'{"subscriptionType":"contact.creation"}', 422, "malformed_event"),
        (
            b'[{"subscriptionType":"contact.creation","occurredAt":"soon","objectId":1}]',
            422,
            "malformed_event",
        ),
        (b'["contact.creation"]', 422, "malformed_event"),
    ],
)
def test_oversized_and_malformed_requests_get_a_4xx_and_land_nothing(
    zone: LandingZone, base_url: str, body: bytes, status: int, reason: str
) -> None:
    response = post_hubspot(base_url, None, body=body)  # correctly signed
    assert (response.status_code, response.json()["error"]) == (status, reason)
    assert zone.pending() == []
    assert health(base_url)["refused_requests"] == {f"hubspot:{reason}": 1}


def test_the_signed_uri_is_the_public_one_behind_a_proxy(tmp_path: Path) -> None:
    zone = LandingZone(tmp_path / "landing")
    public = "https://revorch.example.com"
    events = [hubspot_event("contact.creation", 5, now_ms(), 1)]
    body = json.dumps(events).encode()
    with serving(zone.root, public_url=public) as url:
        stamp = str(now_ms())
        signature = hubspot_signature(
            CLIENT_SECRET, "POST", f"{public}/webhooks/hubspot", body, stamp
        )
        headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": stamp}
        response = httpx.post(f"{url}/webhooks/hubspot", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert len(landed_lines(zone)) == 1


@pytest.mark.parametrize(
    ("name", "secret"), [("BILLING", "whsec_%%%"), ("HUBSPOT", "whsec_c2VjcmV0")]
)
def test_revorch_serve_refuses_a_bad_source_secret(
    in_empty_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys, name: str, secret: str
) -> None:
    from revorch.cli import main

    monkeypatch.setenv(f"REVORCH_SOURCE_SECRET_{name}", secret)
    assert main(["serve", "--port", "0"]) == 2
    assert f"webhook source '{name.lower()}'" in capsys.readouterr().err


def test_revorch_serve_starts_answers_and_stops(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))},
        "REVORCH_HOME": str(tmp_path),
        "REVORCH_HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "REVORCH_INBOX_TOKENS": "alice:" + "a" * 24,
    }
    revorch = Path(sys.executable).with_name("revorch")
    process = subprocess.Popen(
        [str(revorch), "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = None
        for line in process.stderr:
            if "Uvicorn running on " in line:
                url = line.split("Uvicorn running on ")[1].split()[0]
                break
        assert url, "revorch serve did not start"
        events = [hubspot_event("contact.creation", 5, now_ms(), 1)]
        assert post_hubspot(url, events).status_code == 200
        assert health(url)["events_landed"] == 1
        # The same service shows reviewers the approvals inbox, asking them to log in first.
        inbox = httpx.get(f"{url}/approvals/", follow_redirects=True, timeout=30)
        assert inbox.status_code == 200 and 'name="token"' in inbox.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    # uvicorn shuts down cleanly (the landing writer drains), then re-raises the signal.
    assert "Application shutdown complete" in rest
    assert process.returncode == -signal.SIGTERM
    assert len(landed_lines(LandingZone(tmp_path / "landing"))) == 1
