"""The two webhook receivers: HubSpot's signed event arrays, and any other source that signs
its requests as the Standard Webhooks specification says (docs/sources/webhooks.md).

A request is verified, parsed and turned into landing events, and only then written, durably,
to the landing zone (``GroupCommitWriter``); its 2xx means its events are on disk. A request
that is forged, stale, too large or malformed gets a 4xx JSON error, lands nothing, and is
counted (``GET /health``) and logged.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hubspot.exceptions import InvalidSignatureTimestampError
from hubspot.utils.signature import Signature
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook, WebhookVerificationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from revorch.landing import LandingZone, check_source_name
from revorch.server.group_commit import GroupCommitWriter
from revorch.sources.hubspot import webhook as hubspot
from revorch.sources.hubspot.own_writes import OwnWrites

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # far above a HubSpot batch of events
LANDING_OBJECT_TYPES = ("owner", "company", "contact", "deal", "activity", "ticket", "subscription")
LANDING_FIELDS = (
    "event_id",
    "object_type",
    "object_id",
    "occurred_at",
    "op",
    "source",
    "properties",
)


@dataclass(frozen=True)
class ReceiverSettings:
    """What the receivers need (``revorch.server.app.settings_from_environment``)."""

    landing: Path
    hubspot_client_secret: str | None = None
    # The HubSpot write-back's ledger (revorch.sources.hubspot.own_writes): a pushed change
    # that still holds what Revorch wrote is its own echo and lands nothing.
    hubspot_own_writes: Path | None = None
    # source name -> Standard Webhooks secret (``whsec_<base64>``)
    source_secrets: Mapping[str, str] = field(default_factory=dict)
    # The base URL senders post to (https://revorch.example.com), which HubSpot signs; by
    # default the URL the request arrived at (the Host header and the proxy's scheme).
    public_url: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class Refused(Exception):
    """A request the receiver does not take: its HTTP status, a reason code and a detail."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


class Receiver:
    """The receivers' shared state: settings, the landing writer and the counters."""

    def __init__(self, config: ReceiverSettings) -> None:
        self.config = config
        self.writer = GroupCommitWriter(LandingZone(config.landing), source="webhook")
        ledger = config.hubspot_own_writes
        self.own_writes = OwnWrites(ledger) if ledger else None
        self._verifiers = {
            source: _verifier(source, secret) for source, secret in config.source_secrets.items()
        }
        self.accepted: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.events_landed = 0
        self.events_skipped = 0

    def routes(self) -> list[Route]:
        # HubSpot's route comes first, so a Standard Webhooks source cannot be named hubspot.
        return [
            Route("/webhooks/hubspot", self.receive_hubspot, methods=["POST"]),
            Route("/webhooks/{source}", self.receive_standard, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
        ]

    async def receive_hubspot(self, request: Request) -> JSONResponse:
        try:
            if not self.config.hubspot_client_secret:
                raise Refused(
                    404,
                    "not_configured",
                    "the HubSpot receiver has no client secret (REVORCH_HUBSPOT_CLIENT_SECRET)",
                )
            body = await self._body(request)
            self._verify_hubspot(request, body)
            mapped = hubspot.to_landing_events(_strict_json(body), self.own_writes)
        except hubspot.MalformedEvent as error:
            return self._refuse(request, "hubspot", Refused(422, "malformed_event", str(error)))
        except Refused as refused:
            return self._refuse(request, "hubspot", refused)
        self.events_skipped += mapped.skipped
        return await self._land(request, "hubspot", mapped.events, skipped=mapped.skipped)

    async def receive_standard(self, request: Request) -> JSONResponse:
        source = request.path_params["source"]
        try:
            verifier = self._verifiers.get(source)
            if verifier is None:
                # Counted under one name: the path is the sender's to choose.
                unknown = Refused(404, "unknown_source", f"no secret is configured for {source!r}")
                return self._refuse(request, "unknown", unknown)
            body = await self._body(request)
            _verify_standard(verifier, body, request)
            events = _landing_events(_strict_json(body), source)
        except Refused as refused:
            return self._refuse(request, source, refused)
        return await self._land(request, source, events, skipped=0)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "accepted_requests": dict(self.accepted),
                "refused_requests": dict(self.refused),
                "events_landed": self.events_landed,
                "events_skipped": self.events_skipped,
                "batches_written": self.writer.batches_written,
            }
        )

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, "body_too_large", f"the body is over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, "body_too_large", f"the body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _verify_hubspot(self, request: Request, body: bytes) -> None:
        """HubSpot's v3 signature, with the SDK's own check (hubspot.utils.signature)."""
        signature = request.headers.get("x-hubspot-signature-v3")
        timestamp = request.headers.get("x-hubspot-request-timestamp")
        if not signature or not timestamp:
            raise Refused(
                401,
                "missing_signature",
                "X-HubSpot-Signature-v3 and X-HubSpot-Request-Timestamp are required",
            )
        if not signature.isascii():
            raise Refused(401, "invalid_signature", "the signature does not match")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Refused(400, "invalid_utf8", "the body is not UTF-8") from error
        try:
            valid = Signature.is_valid(
                signature=signature,
                client_secret=self.config.hubspot_client_secret,
                request_body=text,
                http_uri=self._signed_uri(request),
                http_method=request.method,
                signature_version="v3",
                timestamp=timestamp,
            )
        except InvalidSignatureTimestampError as error:
            raise Refused(
                401, "stale_timestamp", "the request timestamp is more than 5 minutes old"
            ) from error
        if not valid:
            raise Refused(401, "invalid_signature", "the signature does not match")

    def _signed_uri(self, request: Request) -> str:
        """The full URI HubSpot signed: the public base URL when one is set (a reverse proxy
        in front may change host and scheme), else the URL the request arrived at."""
        if not self.config.public_url:
            return str(request.url)
        query = request.url.query
        return (
            self.config.public_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")
        )

    def _refuse(self, request: Request, source: str, refused: Refused) -> JSONResponse:
        self.refused[f"{source}:{refused.reason}"] += 1
        client = request.client.host if request.client else "?"
        log.warning(
            "refused %s %r from %s: %s (%r)",
            request.method,
            request.url.path,
            client,
            refused.reason,
            refused.detail,
        )
        return JSONResponse(
            {"error": refused.reason, "detail": refused.detail}, status_code=refused.status
        )

    async def _land(
        self, request: Request, source: str, events: list[dict], *, skipped: int
    ) -> JSONResponse:
        lines = [json.dumps(event, separators=(",", ":")).encode() for event in events]
        batch_id = None
        if lines:
            try:
                batch_id = await self.writer.land(lines)
            except Exception as error:  # the disk: the sender retries on a 5xx
                log.error("could not land a %s request: %s", source, error)
                return JSONResponse(
                    {"error": "landing_failed", "detail": "could not write to the landing zone"},
                    status_code=503,
                )
        self.accepted[source] += 1
        self.events_landed += len(lines)
        return JSONResponse({"landed": len(lines), "skipped": skipped, "batch_id": batch_id})


def _verify_standard(verifier: Webhook, body: bytes, request: Request) -> None:
    headers = {name: request.headers.get(name) for name in _STANDARD_HEADERS}
    if not all(headers.values()):
        raise Refused(
            401,
            "missing_signature",
            "webhook-id, webhook-timestamp and webhook-signature are required (Standard Webhooks)",
        )
    try:
        verifier.verify(body, headers, json_parse=False)
    except WebhookVerificationError as error:
        if "timestamp" in str(error):
            raise Refused(401, "stale_timestamp", str(error)) from error
        raise Refused(401, "invalid_signature", "no signature matches") from error
    except ValueError as error:  # not UTF-8, or a signature that is not v1,<base64>
        raise Refused(401, "invalid_signature", "no signature matches") from error


_STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _landing_events(payload: object, source: str) -> list[dict]:
    """The events of a Standard Webhooks body: one landing event or an array of them, each
    checked for the envelope (docs/landing_zone.md); ingestion checks property types."""
    events = payload if isinstance(payload, list) else [payload]
    for position, event in enumerate(events):
        problem = _envelope_problem(event, source)
        if problem:
            where = f"event {position}: " if isinstance(payload, list) else ""
            raise Refused(422, "malformed_event", where + problem)
        event["source"] = source
    return events


def _envelope_problem(event: object, source: str) -> str | None:
    if not isinstance(event, dict):
        return "not a JSON object"
    unknown = sorted(set(event) - set(LANDING_FIELDS))
    if unknown:
        return "unknown fields: " + ", ".join(unknown)
    for name in ("event_id", "object_id"):
        value = event.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and name == "object_id":
            continue
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            return f"{name} must be a non-blank string"
    if event.get("object_type") not in LANDING_OBJECT_TYPES:
        return "object_type must be one of " + ", ".join(LANDING_OBJECT_TYPES)
    op = event.get("op", "upsert")
    if op not in ("upsert", "delete"):
        return "op must be upsert or delete"
    if not _has_time_zone(event.get("occurred_at")):
        return "occurred_at must be an ISO 8601 timestamp with a time zone"
    if op == "upsert" and not isinstance(event.get("properties"), dict):
        return "an upsert needs a properties object"
    if event.get("source", source) != source:
        return f"source must be {source!r}, the source this request is signed for"
    return None


def _has_time_zone(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _strict_json(body: bytes) -> object:
    """RFC 8259 JSON: no NaN or Infinity, no key twice in one object (as ingestion reads)."""
    try:
        return json.loads(
            body, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite
        )
    except (ValueError, RecursionError) as error:
        detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error)
        raise Refused(400, "invalid_json", f"the body is not JSON: {detail}") from error


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice in one object")
    return dict(pairs)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def _verifier(source: str, secret: str) -> Webhook:
    try:
        check_source_name(source)
        if source == "hubspot":
            raise ValueError("hubspot has its own receiver and signature")
        return Webhook(secret)
    except (ValueError, EmptyWebhookSecretError) as error:  # a bad name, or not whsec_<base64>
        raise ValueError(f"webhook source {source!r}: {error}") from None
