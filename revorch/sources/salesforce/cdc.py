"""Salesforce Change Data Capture over the Pub/Sub API (gRPC; Avro payloads).

The subscriber asks for events after its stored replay id (``ReplayPreset.CUSTOM``), decodes
each with the schema ``GetSchema`` names, lands the batch, and only then stores the batch's
last replay id: after a crash the batch comes again with the same event ids
(``salesforce:cdc:<replay id>:<record id>``), which ingestion counts as duplicates.

- Changes whose ``changeOrigin`` carries the configured marker are Revorch's own writes
  (write-back sets ``Sforce-Call-Options: client=revorch``) and are skipped, so a decision
  is never read back in as a new change.
- GAP_* and GAP_OVERFLOW events carry no field values, and a field sent as a diff
  (``diffFields``) is not its value: those records are read again through REST.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fastavro
import grpc

from revorch.landing import LandingZone
from revorch.sources.salesforce.cursor import CursorFile
from revorch.sources.salesforce.mapping import (
    FIELDS,
    ValueMaps,
    change_source,
    is_converted_lead,
    iso_timestamp,
    to_properties,
)
from revorch.sources.salesforce.poller import SOURCE, SalesforcePoller
from revorch.sources.salesforce.pubsub import pubsub_api_pb2 as pb2
from revorch.sources.salesforce.pubsub import pubsub_api_pb2_grpc as pb2_grpc

log = logging.getLogger(__name__)

PUBSUB_ENDPOINT = "api.pubsub.salesforce.com:7443"
ALL_CHANGE_EVENTS = "/data/ChangeEvents"
GAP_TYPES = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"})
_WHOLE_RECORD_TYPES = frozenset({"CREATE", "UNDELETE"})


@dataclass(frozen=True)
class PubSubAuth:
    """What every Pub/Sub API call carries (pubsub_api.proto, "session token
    authentication"): an OAuth access token, the org's instance URL and its org id."""

    access_token: str
    instance_url: str
    tenant_id: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("accesstoken", self.access_token),
            ("instanceurl", self.instance_url),
            ("tenantid", self.tenant_id),
        )


@dataclass
class CdcSummary:
    """What one subscription landed and skipped."""

    received: int = 0
    landed: int = 0
    skipped_own: int = 0
    skipped_unmapped: int = 0
    reread: int = 0
    batches: int = 0
    replay_id: str | None = None
    change_types: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Schema:
    parsed: Any
    fields: list[dict]


def pubsub_channel(endpoint: str = PUBSUB_ENDPOINT, *, tls: bool = True) -> grpc.Channel:
    """A channel to the Pub/Sub API (TLS with the system's roots unless ``tls`` is off, which
    only a local test server needs)."""
    if tls:
        return grpc.secure_channel(endpoint, grpc.ssl_channel_credentials())
    return grpc.insecure_channel(endpoint)


class ChangeEventSubscriber:
    """Lands the change events of ``topic`` into ``zone``, resuming from ``cursor``."""

    def __init__(
        self,
        channel: grpc.Channel,
        auth: PubSubAuth,
        zone: LandingZone,
        cursor: CursorFile,
        poller: SalesforcePoller,
        *,
        topic: str = ALL_CHANGE_EVENTS,
        own_change_origin: str | None = "client=revorch",
        batch_size: int = 100,
        first_start: str = "LATEST",
        maps: ValueMaps | None = None,
    ) -> None:
        self.stub = pb2_grpc.PubSubStub(channel)
        self.auth = auth
        self.zone = zone
        self.cursor = cursor
        self.poller = poller
        self.topic = topic
        self.own_change_origin = own_change_origin
        self.batch_size = batch_size
        self.first_start = pb2.ReplayPreset.Value(first_start)
        self.maps = maps or poller.maps
        self._schemas: dict[str, _Schema] = {}

    def run(
        self, *, idle_seconds: float | None = None, max_seconds: float | None = None
    ) -> CdcSummary:
        """Subscribe and land events until no event came for ``idle_seconds``, or for
        ``max_seconds`` in all (for ever if both are None)."""
        summary = CdcSummary(replay_id=self.cursor.load().get("replay_id"))
        topic = self.stub.GetTopic(pb2.TopicRequest(topic_name=self.topic), metadata=self._meta)
        if not topic.can_subscribe:
            raise PermissionError(f"this user may not subscribe to {self.topic}")
        requests: queue.Queue[pb2.FetchRequest | None] = queue.Queue()
        requests.put(self._first_request(summary.replay_id))
        call = self.stub.Subscribe(_drain(requests), metadata=self._meta, timeout=max_seconds)
        watchdog = _Watchdog(idle_seconds, call.cancel)
        try:
            for response in call:
                if response.events:
                    watchdog.kick()
                self._take(response, summary)
                if response.pending_num_requested == 0:
                    requests.put(
                        pb2.FetchRequest(topic_name=self.topic, num_requested=self.batch_size)
                    )
        except grpc.RpcError as error:
            stopped = (watchdog.fired and error.code() == grpc.StatusCode.CANCELLED) or (
                max_seconds is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            if not stopped:
                raise
        finally:
            watchdog.stop()
            requests.put(None)
            call.cancel()
        return summary

    @property
    def _meta(self) -> tuple[tuple[str, str], ...]:
        return self.auth.metadata()

    def _first_request(self, replay_id: str | None) -> pb2.FetchRequest:
        if replay_id:
            return pb2.FetchRequest(
                topic_name=self.topic,
                replay_preset=pb2.ReplayPreset.CUSTOM,
                replay_id=bytes.fromhex(replay_id),
                num_requested=self.batch_size,
            )
        return pb2.FetchRequest(
            topic_name=self.topic, replay_preset=self.first_start, num_requested=self.batch_size
        )

    def _take(self, response: pb2.FetchResponse, summary: CdcSummary) -> None:
        """Land one response's events, then store its replay id (never before)."""
        events: list[dict] = []
        for consumer_event in response.events:
            summary.received += 1
            events += self._landing_events(consumer_event, summary)
        if events:
            self.zone.write_events(SOURCE, events)
            summary.landed += len(events)
            summary.batches += 1
        last = response.events[-1].replay_id if response.events else response.latest_replay_id
        if last and last.hex() != summary.replay_id:
            summary.replay_id = last.hex()
            self.cursor.save(self.cursor.load() | {"replay_id": summary.replay_id})

    def _landing_events(self, consumer_event: pb2.ConsumerEvent, summary: CdcSummary) -> list:
        schema = self._schema(consumer_event.event.schema_id)
        payload = fastavro.schemaless_reader(
            io.BytesIO(consumer_event.event.payload), schema.parsed
        )
        header = payload["ChangeEventHeader"]
        sobject, change = header["entityName"], header["changeType"]
        summary.change_types[change] = summary.change_types.get(change, 0) + 1
        if self.own_change_origin and self.own_change_origin in (header.get("changeOrigin") or ""):
            summary.skipped_own += 1
            return []
        if sobject not in FIELDS:
            summary.skipped_unmapped += 1
            return []
        occurred_at = iso_timestamp(header["commitTimestamp"])
        ids = list(header.get("recordIds") or [])
        event_id = f"{SOURCE}:cdc:{consumer_event.replay_id.hex()}"
        if change in GAP_TYPES or decode_bitmap(header.get("diffFields") or [], schema.fields):
            summary.reread += 1
            return self._read_again(sobject, ids, event_id, occurred_at)
        base = {
            "object_type": FIELDS[sobject][0],
            "occurred_at": occurred_at,
            # Who made the change (an API client, a user), for the estate audit.
            "source": change_source(header.get("changeOrigin"), header.get("commitUser")),
        }
        if change == "DELETE":
            return [
                base | {"event_id": f"{event_id}:{i}", "object_id": i, "op": "delete"} for i in ids
            ]
        if change in _WHOLE_RECORD_TYPES:
            fields = _flatten({k: v for k, v in payload.items() if k != "ChangeEventHeader"})
            fields = {k: v for k, v in fields.items() if v is not None}
        else:
            fields = _changed_fields(payload, header, schema.fields)
        if is_converted_lead(sobject, fields):
            return [
                base | {"event_id": f"{event_id}:{i}", "object_id": i, "op": "delete"} for i in ids
            ]
        properties = to_properties(sobject, fields, occurred_at, self.maps)
        return [
            base
            | {"event_id": f"{event_id}:{i}", "object_id": i, "op": "upsert"}
            | {"properties": properties}
            for i in ids
        ]

    def _read_again(
        self, sobject: str, ids: list[str], event_id: str, occurred_at: str
    ) -> list[dict]:
        """The records a gap names, as REST reads them now; those not found are deleted. An
        overflow naming no record re-reads every record changed since its commit."""
        if not ids:
            moment = datetime.fromisoformat(occurred_at).astimezone(UTC)
            return self.poller.changed_since(sobject, moment)
        events, missing = self.poller.read_records(sobject, ids)
        return events + [
            {
                "event_id": f"{event_id}:{record_id}",
                "object_type": FIELDS[sobject][0],
                "object_id": record_id,
                "occurred_at": occurred_at,
                "op": "delete",
            }
            for record_id in sorted(missing)
        ]

    def _schema(self, schema_id: str) -> _Schema:
        if schema_id not in self._schemas:
            info = self.stub.GetSchema(pb2.SchemaRequest(schema_id=schema_id), metadata=self._meta)
            raw = json.loads(info.schema_json)
            self._schemas[schema_id] = _Schema(fastavro.parse_schema(raw), raw["fields"])
        return self._schemas[schema_id]


def decode_bitmap(entries: list[str], fields: list[dict]) -> list[str]:
    """Field names from a change event's bitmap field (``changedFields``, ``nulledFields``,
    ``diffFields``): the first entry ``0x…`` sets bit *i* for top-level field *i* of the
    schema; ``<i>-0x…`` entries set bits for the fields of compound field *i*
    (``Name.FirstName``). Salesforce, "Event Deserialization Considerations"."""
    names: list[str] = []
    for entry in entries:
        if entry.startswith("0x"):
            names += [fields[i]["name"] for i in _bits(entry)]
        elif "-" in entry:
            position, bitmap = entry.split("-", 1)
            parent = fields[int(position)]
            children = _record_fields(parent["type"])
            names += [f"{parent['name']}.{children[i]['name']}" for i in _bits(bitmap)]
    return names


def _changed_fields(payload: dict, header: dict, schema_fields: list[dict]) -> dict[str, Any]:
    """The fields an UPDATE set (their values) or cleared (None), flattened."""
    fields: dict[str, Any] = {}
    for name in decode_bitmap(header.get("changedFields") or [], schema_fields):
        if "." in name:
            parent, child = name.split(".", 1)
            fields[_flat_name(parent, child)] = (payload.get(parent) or {}).get(child)
        elif isinstance(payload.get(name), dict):
            fields |= _flatten({name: payload[name]})
        else:
            fields[name] = payload.get(name)
    for name in decode_bitmap(header.get("nulledFields") or [], schema_fields):
        parent, _, child = name.partition(".")
        fields[_flat_name(parent, child) if child else name] = None
    return fields


def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    """Compound fields as the fields REST returns: ``Name.FirstName`` -> ``FirstName``,
    ``BillingAddress.Country`` -> ``BillingCountry``."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat |= {_flat_name(name, child): v for child, v in value.items()}
        else:
            flat[name] = value
    return flat


def _flat_name(parent: str, child: str) -> str:
    if parent.endswith("Address"):
        return parent.removesuffix("Address") + child
    return child


def _record_fields(avro_type: Any) -> list[dict]:
    """The fields of a record type, also inside an optional union (["null", {...}])."""
    if isinstance(avro_type, list):
        return next(_record_fields(t) for t in avro_type if isinstance(t, dict))
    return avro_type["fields"]


def _bits(bitmap: str) -> list[int]:
    value = int(bitmap, 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def _drain(requests: queue.Queue) -> Iterator[pb2.FetchRequest]:
    """The client's side of the Subscribe stream: FetchRequests as they are queued."""
    while (request := requests.get()) is not None:
        yield request


class _Watchdog:
    """Calls ``action`` once no ``kick`` came for ``seconds`` (never if ``seconds`` is None)."""

    def __init__(self, seconds: float | None, action: Callable[[], Any]) -> None:
        self.fired = False
        self._kicked = threading.Event()
        self._stopped = threading.Event()
        if seconds is not None:
            threading.Thread(target=self._watch, args=(seconds, action), daemon=True).start()

    def kick(self) -> None:
        self._kicked.set()

    def stop(self) -> None:
        self._stopped.set()
        self._kicked.set()

    def _watch(self, seconds: float, action: Callable[[], Any]) -> None:
        while self._kicked.wait(seconds):
            if self._stopped.is_set():
                return
            self._kicked.clear()
        self.fired = True
        action()
