"""A Salesforce org on 127.0.0.1 for the tests: the REST API over HTTPS (SOQL query with
nextRecordsUrl paging, describe, deleted records) and the Pub/Sub API over gRPC (GetTopic,
GetSchema, Subscribe), answering as Salesforce documents them."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import re
import ssl
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import duckdb
import fastavro
import grpc
import pyarrow as pa
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from revorch.sources.salesforce.pubsub import pubsub_api_pb2 as pb2
from revorch.sources.salesforce.pubsub import pubsub_api_pb2_grpc as pb2_grpc

TOKEN = "00Dxx0000000001!session"
ORG_ID = "00Dxx0000000001EAA"
API = "/services/data/v59.0"


def sf_time(moment: dt.datetime) -> str:
    """A datetime as the REST API writes it."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class FakeRestOrg:
    """Records by object; ``deleted`` lists (object, id, deleted at). SOQL WHERE clauses are
    evaluated by DuckDB over (Id, SystemModstamp), the two columns the poller filters on."""

    def __init__(self, folder: Path, page_size: int = 2) -> None:
        self.records: dict[str, list[dict]] = {}
        self.deleted: list[tuple[str, str, dt.datetime]] = []
        self.page_size = page_size
        self.queries: list[str] = []
        self.deleted_calls: list[tuple[str, str, str]] = []
        self._cursors: dict[str, list[dict]] = {}
        self.writes: list[tuple[str, str, dict, str | None]] = []
        self.api_usage = (18, 15_000)  # requests used today, and the org's daily allowance
        self.delay = 0.0  # seconds each GET takes (so a test can kill a poll mid-run)
        # Where a write's change event goes (a FakePubSub), as Salesforce's CDC would send it.
        self.change_events: FakePubSub | None = None
        self.cert, key = self_signed_cert(folder)
        org = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one TLS handshake per client
            disable_nagle_algorithm = True  # headers and body in two writes: no 40 ms wait

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, [{"errorCode": "INVALID_SESSION_ID"}])
                time.sleep(org.delay)
                status, body = org.answer(self.path)
                self._send(status, body)

            def do_PATCH(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, [{"errorCode": "INVALID_SESSION_ID"}])
                fields = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                origin = self.headers.get("Sforce-Call-Options")
                status, body = org.write(self.path, fields, origin)
                if status == 204:
                    self.send_response(204)
                    used, allowed = org.api_usage
                    self.send_header("Sforce-Limit-Info", f"api-usage={used}/{allowed}")
                    self.end_headers()
                else:
                    self._send(status, body)

            def _send(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def session(self) -> requests.Session:
        session = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would override the session's own roots.
        session.trust_env = False
        session.verify = str(self.cert)
        return session

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str) -> tuple[int, object]:
        url = urlparse(path)
        if match := re.fullmatch(rf"{API}/sobjects/(\w+)/describe/?", url.path):
            fields = {name for r in self.records.get(match[1], []) for name in r}
            return 200, {"fields": [{"name": f, "type": "string"} for f in sorted(fields)]}
        if match := re.fullmatch(rf"{API}/sobjects/(\w+)/deleted/?", url.path):
            query = parse_qs(url.query)
            start = dt.datetime.fromisoformat(query["start"][0])
            end = dt.datetime.fromisoformat(query["end"][0])
            self.deleted_calls.append((match[1], query["start"][0], query["end"][0]))
            end = end.replace(second=0, microsecond=0)  # whole minutes, as Salesforce covers
            rows = [
                {"id": record_id, "deletedDate": sf_time(at)}
                for sobject, record_id, at in self.deleted
                if sobject == match[1] and start <= at < end
            ]
            return 200, {
                "deletedRecords": rows,
                "earliestDateAvailable": sf_time(start),
                "latestDateCovered": sf_time(end),
            }
        if url.path == f"{API}/query/":
            soql = parse_qs(url.query)["q"][0]
            self.queries.append(soql)
            return 200, self._page(self._run(soql), locator=None)
        if match := re.fullmatch(rf"{API}/query/([\w-]+)", url.path):
            return 200, self._page(self._cursors.pop(match[1]), locator=match[1])
        return 404, [{"errorCode": "NOT_FOUND", "message": path}]

    def write(self, path: str, fields: dict, call_options: str | None) -> tuple[int, object]:
        """PATCH sobjects/<Object>/<Id> (update) or sobjects/<Object>/<Field>/<value> (upsert
        on an external id: 201 created, 204 updated)."""
        match = re.fullmatch(rf"{API}/sobjects/(\w+)/(?:(\w+__c)/)?([\w-]+)", urlparse(path).path)
        if not match:
            return 404, [{"errorCode": "NOT_FOUND", "message": path}]
        sobject, external_field, key = match.groups()
        self.writes.append((sobject, key, fields, call_options))
        records = self.records.setdefault(sobject, [])
        field = external_field or "Id"
        record = next((r for r in records if r.get(field) == key), None)
        now = dt.datetime.now(dt.UTC)
        change = "UPDATE"
        if record is None:
            if not external_field:
                return 404, [{"errorCode": "NOT_FOUND", "message": key}]
            record = {"Id": f"00T{len(records):015d}", field: key}
            records.append(record)
            change = "CREATE"
        record |= fields | {"SystemModstamp": sf_time(now)}
        if self.change_events is not None:
            client = (call_options or "").removeprefix("client=")
            origin = "com/salesforce/api/rest/59.0" + (f";client={client}" if client else "")
            self.change_events.publish(
                change_event(change, [record["Id"]], now, origin=origin, entity=sobject),
                schema_id=TASK_SCHEMA_ID if sobject == "Task" else CONTACT_SCHEMA_ID,
            )
        if change == "CREATE":
            return 201, {"id": record["Id"], "success": True, "errors": [], "created": True}
        return 204, None

    def _run(self, soql: str) -> list[dict]:
        match = re.fullmatch(r"SELECT (.+) FROM (\w+)(?: WHERE (.+?))?(?: ORDER BY (.+))?", soql)
        assert match, soql
        fields, sobject, where, order = match.groups()
        records = {r["Id"]: r for r in self.records.get(sobject, [])}
        db = duckdb.connect()
        t = pa.table(  # noqa: F841 (DuckDB reads it by name)
            {
                "Id": pa.array([r["Id"] for r in records.values()], pa.string()),
                "SystemModstamp": pa.array(
                    [_parse(r["SystemModstamp"]) for r in records.values()],
                    pa.timestamp("us", "UTC"),
                ),
            }
        )
        sql_where = re.sub(
            r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", r"TIMESTAMPTZ '\1'", where or "true"
        )
        ids = db.execute(f"SELECT Id FROM t WHERE {sql_where} ORDER BY {order or 'Id'}").fetchall()
        names = [f.strip() for f in fields.split(",")]
        return [
            {"attributes": {"type": sobject}} | {n: records[i].get(n) for n in names}
            for (i,) in ids
        ]

    def _page(self, rows: list[dict], locator: str | None) -> dict:
        page, rest = rows[: self.page_size], rows[self.page_size :]
        body = {"totalSize": len(rows), "done": not rest, "records": page}
        if rest:
            base = (locator or f"01g{len(self.queries):05d}").split("-")[0]
            following = f"{base}-{len(self._cursors) + len(page)}{len(rest)}"
            self._cursors[following] = rest
            body["nextRecordsUrl"] = f"{API}/query/{following}"
        return body


def _parse(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


# -- Pub/Sub API ----------------------------------------------------------------------------

CHANGE_TYPES = [
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
    "SNAPSHOT",
]


def _optional(name: str, avro_type: object) -> dict:
    return {"name": name, "type": ["null", avro_type], "default": None}


# The shape of Salesforce's ContactChangeEvent schema: the header first, then the fields,
# with the Name compound field as a nested record.
CONTACT_SCHEMA = {
    "type": "record",
    "name": "ContactChangeEvent",
    "namespace": "com.sforce.eventbus",
    "fields": [
        {
            "name": "ChangeEventHeader",
            "type": {
                "type": "record",
                "name": "ChangeEventHeader",
                "fields": [
                    {"name": "entityName", "type": "string"},
                    {"name": "recordIds", "type": {"type": "array", "items": "string"}},
                    {
                        "name": "changeType",
                        "type": {"type": "enum", "name": "ChangeType", "symbols": CHANGE_TYPES},
                    },
                    {"name": "changeOrigin", "type": "string"},
                    {"name": "transactionKey", "type": "string"},
                    {"name": "sequenceNumber", "type": "int"},
                    {"name": "commitTimestamp", "type": "long"},
                    {"name": "commitNumber", "type": "long"},
                    {"name": "commitUser", "type": "string"},
                    {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
                    {"name": "diffFields", "type": {"type": "array", "items": "string"}},
                    {"name": "changedFields", "type": {"type": "array", "items": "string"}},
                ],
            },
        },
        _optional("AccountId", "string"),
        _optional(
            "Name",
            {
                "type": "record",
                "name": "Switchable_PersonName",
                "fields": [
                    _optional("Salutation", "string"),
                    _optional("FirstName", "string"),
                    _optional("LastName", "string"),
                ],
            },
        ),
        _optional("Email", "string"),
        _optional("Title", "string"),
        _optional("Phone", "string"),
        _optional("OwnerId", "string"),
        _optional("LeadSource", "string"),
        _optional("CreatedDate", "long"),
        _optional("LastModifiedDate", "long"),
        _optional("Level__c", "string"),
    ],
}
CONTACT_SCHEMA_ID = "contact-schema-1"
TASK_SCHEMA = {
    "type": "record",
    "name": "TaskChangeEvent",
    "namespace": "com.sforce.eventbus",
    "fields": [
        CONTACT_SCHEMA["fields"][0],
        *(
            _optional(name, "string")
            for name in (
                "WhoId",
                "WhatId",
                "OwnerId",
                "Subject",
                "Description",
                "Status",
                "Revorch_Action_Id__c",
            )
        ),
    ],
}
TASK_SCHEMA_ID = "task-schema-1"
SCHEMAS = {CONTACT_SCHEMA_ID: CONTACT_SCHEMA, TASK_SCHEMA_ID: TASK_SCHEMA}
POSITIONS = {f["name"]: i for i, f in enumerate(CONTACT_SCHEMA["fields"])}


def bitmap(*names: str) -> list[str]:
    """The bitmap field Salesforce sends for these top-level fields and ``Name.<child>``."""
    top = sum(1 << POSITIONS[n] for n in names if "." not in n)
    children = [n.split(".", 1)[1] for n in names if n.startswith("Name.")]
    entries = [hex(top)] if top else []
    if children:
        child_fields = [
            f["name"] for f in CONTACT_SCHEMA["fields"][POSITIONS["Name"]]["type"][1]["fields"]
        ]
        entries.append(
            f"{POSITIONS['Name']}-{hex(sum(1 << child_fields.index(c) for c in children))}"
        )
    return entries


def change_event(
    change_type: str,
    record_ids: list[str],
    at: dt.datetime,
    *,
    origin: str = "",
    changed: list[str] = (),
    nulled: list[str] = (),
    **fields,
) -> dict:
    header = {
        "entityName": "Contact",
        "recordIds": record_ids,
        "changeType": change_type,
        "changeOrigin": origin or "com/salesforce/api/soap/59.0;client=SfdcInternalAPI/",
        "transactionKey": f"tx-{at.timestamp()}",
        "sequenceNumber": 1,
        "commitTimestamp": int(at.timestamp() * 1000),
        "commitNumber": int(at.timestamp()),
        "commitUser": "005xx000001Sv6AAAS",
        "nulledFields": bitmap(*nulled),
        "diffFields": [],
        "changedFields": bitmap(*changed),
    }
    return {"ChangeEventHeader": header} | fields


class FakePubSub(pb2_grpc.PubSubServicer):
    """Holds Avro-encoded change events with opaque, non-contiguous replay ids."""

    def __init__(self) -> None:
        self.events: list[tuple[bytes, bytes]] = []
        self.first_requests: list[pb2.FetchRequest] = []
        self.metadata: list[dict] = []
        self._parsed = {key: fastavro.parse_schema(schema) for key, schema in SCHEMAS.items()}

    def publish(self, payload: dict, schema_id: str = CONTACT_SCHEMA_ID) -> bytes:
        replay_id = (1_000 + 7 * len(self.events)).to_bytes(8, "big")
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, self._parsed[schema_id], payload)
        self.events.append((replay_id, buffer.getvalue(), schema_id))
        return replay_id

    def _check(self, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.metadata.append(metadata)
        if (metadata.get("accesstoken"), metadata.get("tenantid")) != (TOKEN, ORG_ID):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad session")

    def GetTopic(self, request, context):
        self._check(context)
        return pb2.TopicInfo(
            topic_name=request.topic_name,
            tenant_guid=ORG_ID,
            can_subscribe=True,
            schema_id=CONTACT_SCHEMA_ID,
        )

    def GetSchema(self, request, context):
        self._check(context)
        if request.schema_id not in SCHEMAS:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such schema")
        return pb2.SchemaInfo(
            schema_json=json.dumps(SCHEMAS[request.schema_id]), schema_id=request.schema_id
        )

    def Subscribe(self, request_iterator, context):
        self._check(context)
        first = next(request_iterator)
        self.first_requests.append(first)
        ids = [replay_id for replay_id, _, _ in self.events]
        if first.replay_preset == pb2.ReplayPreset.CUSTOM:
            if first.replay_id not in ids:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "replay id not valid")
            position = ids.index(first.replay_id) + 1
        elif first.replay_preset == pb2.ReplayPreset.EARLIEST:
            position = 0
        else:
            position = len(ids)
        credit = first.num_requested
        while True:
            if credit and position < len(self.events):
                sent = self.events[position : position + credit]
                position += len(sent)
                credit -= len(sent)
                yield pb2.FetchResponse(
                    events=[
                        pb2.ConsumerEvent(
                            event=pb2.ProducerEvent(id=r.hex(), schema_id=schema, payload=p),
                            replay_id=r,
                        )
                        for r, p, schema in sent
                    ],
                    latest_replay_id=sent[-1][0],
                    pending_num_requested=credit,
                )
                continue
            if credit:
                # Caught up: Salesforce sends a keepalive with the latest replay id.
                yield pb2.FetchResponse(
                    latest_replay_id=self.events[-1][0] if self.events else b"",
                    pending_num_requested=credit,
                )
            try:
                request = next(request_iterator)
            except (StopIteration, grpc.RpcError):
                return
            credit += request.num_requested


def start_pubsub(servicer: FakePubSub) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_PubSubServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"
