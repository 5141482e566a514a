"""A HubSpot portal on 127.0.0.1 that answers the few APIs Revorch uses as HubSpot documents
them: CRM v3 search (filterGroups, one sort, ``after`` paging, ``total``, at most 200 per page
and a 400 past the 10,000th result), the archived listing, single-record read and update,
task creation, batch reads with property history (who changed what: ``sourceType``,
``sourceId``), v4 batch association reads, owners, bearer tokens, and a 429 with
``Retry-After`` when asked to."""

from __future__ import annotations

import json
import operator
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LAST_MODIFIED = {"contacts": "lastmodifieddate"}  # every other object: hs_lastmodifieddate
CAP = 10_000
OPERATORS = {"GTE": operator.ge, "LTE": operator.le, "GT": operator.gt, "LT": operator.lt}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def last_modified(object_type: str) -> str:
    return LAST_MODIFIED.get(object_type, "hs_lastmodifieddate")


class Portal:
    """The portal's data and what it was asked; tests read and change both directly."""

    def __init__(self, token: str = "pat-test") -> None:
        self.token = token
        self.lock = threading.RLock()
        self.records: dict[str, dict[str, dict]] = {}
        self.associations: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
        self.owners: list[dict] = []
        # (object type, id) -> property -> its versions, newest first, as HubSpot keeps them.
        self.history: dict[tuple[str, str], dict[str, list[dict]]] = {}
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.searches: list[tuple[str, dict]] = []  # object type, request body
        self.rate_limit_searches = 0  # answer this many search requests with 429 first
        self.search_delay = 0.0  # seconds each search takes
        self._clock = int(time.time() * 1000)
        self._next_id = 900_000

    # -- data -------------------------------------------------------------------------
    def add(self, object_type: str, object_id: str, modified_ms: int, **properties) -> None:
        props = {"hs_object_id": object_id, "createdate": iso(modified_ms), **properties}
        props[last_modified(object_type)] = iso(modified_ms)
        self.records.setdefault(object_type, {})[object_id] = {
            "id": object_id,
            "properties": props,
            "created_ms": modified_ms,
            "modified_ms": modified_ms,
            "archived_ms": None,
        }
        self._record_history(object_type, object_id, properties, modified_ms, ("CRM_UI", None))

    def _record_history(
        self, object_type: str, object_id: str, properties: dict, at_ms: int, changed_by
    ) -> None:
        kept = self.history.setdefault((object_type, object_id), {})
        source_type, source_id = changed_by
        for name, value in properties.items():
            version = {"value": str(value), "timestamp": iso(at_ms), "sourceType": source_type}
            if source_id is not None:
                version["sourceId"] = source_id
            kept.setdefault(name, []).insert(0, version)

    def associate(self, from_type: str, from_id: str, to_type: str, to_id: str, type_id: int):
        self.associations.setdefault((from_type, from_id, to_type), []).append((to_id, type_id))

    def archive(self, object_type: str, object_id: str, at_ms: int) -> None:
        self.records[object_type][object_id]["archived_ms"] = at_ms

    def modify(
        self, object_type: str, object_id: str, *, changed_by=("CRM_UI", None), **properties
    ) -> int:
        """Change a record as ``changed_by`` (HubSpot's sourceType and sourceId) would."""
        with self.lock:
            return self._modify(object_type, object_id, properties, changed_by)

    def _modify(self, object_type: str, object_id: str, properties: dict, changed_by) -> int:
        record = self.records[object_type][object_id]
        # Each change gets its own instant, never one ahead of the wall clock: a poll that
        # starts after this change must find it inside its window (HubSpot stamps real time).
        while int(time.time() * 1000) <= self._clock:
            time.sleep(0.0005)
        self._clock = int(time.time() * 1000)
        record["properties"].update(properties)
        record["modified_ms"] = self._clock
        record["properties"][last_modified(object_type)] = iso(self._clock)
        self._record_history(object_type, object_id, properties, self._clock, changed_by)
        return self._clock

    def count(self, method: str, prefix: str, status: int | None = None) -> int:
        return sum(
            1
            for m, p, s in self.requests
            if m == method and p.startswith(prefix) and (status is None or s == status)
        )

    # -- answers ----------------------------------------------------------------------
    def shape(self, record: dict, wanted: list[str] | None, object_type: str) -> dict:
        props = record["properties"]
        defaults = ["hs_object_id", "createdate", last_modified(object_type)]
        names = list(dict.fromkeys([*defaults, *(wanted or [])]))
        shaped = {
            "id": record["id"],
            "properties": {n: props.get(n) for n in names},
            "createdAt": iso(record["created_ms"]),
            "updatedAt": iso(record["modified_ms"]),
            "archived": record["archived_ms"] is not None,
        }
        if record["archived_ms"] is not None:
            shaped["archivedAt"] = iso(record["archived_ms"])
        return shaped

    def search(self, object_type: str, body: dict) -> tuple[int, dict]:
        limit, after = int(body.get("limit", 10)), int(body.get("after") or 0)
        if limit > 200:
            return 400, _error("limit must be at most 200", "VALIDATION_ERROR")
        if after + limit > CAP:
            # HubSpot: a query returns at most 10,000 results; paging past them is a 400.
            return 400, _error(
                f"Search results are limited to {CAP} records; page beyond them with a "
                "narrower query",
                "VALIDATION_ERROR",
            )
        live = [r for r in self.records.get(object_type, {}).values() if r["archived_ms"] is None]
        groups = body.get("filterGroups") or []
        if groups:
            live = [r for r in live if any(_matches(r, g["filters"], object_type) for g in groups)]
        for sort in reversed(body.get("sorts") or []):
            key = sort["propertyName"] if isinstance(sort, dict) else sort
            live.sort(
                key=lambda r: (_sort_value(r, key, object_type), int(r["id"])),
                reverse=isinstance(sort, dict) and sort.get("direction") == "DESCENDING",
            )
        page = live[after : after + limit]
        answer: dict = {
            "total": len(live),
            "results": [self.shape(r, body.get("properties"), object_type) for r in page],
        }
        if after + limit < len(live):
            answer["paging"] = {"next": {"after": str(after + limit), "link": "?after="}}
        return 200, answer


def _error(message: str, category: str) -> dict:
    return {"status": "error", "message": message, "correlationId": "fake", "category": category}


def _sort_value(record: dict, name: str, object_type: str):
    if name == last_modified(object_type):
        return record["modified_ms"]
    return str(record["properties"].get(name) or "")


def _matches(record: dict, filters: list[dict], object_type: str) -> bool:
    for f in filters:
        name, op, value = f["propertyName"], f["operator"], f.get("value")
        if name == last_modified(object_type):
            have, want = record["modified_ms"], int(value)
        else:
            have, want = record["properties"].get(name), value
        if op in ("EQ", "NEQ"):
            ok = (have == want) == (op == "EQ")
        else:
            ok = have is not None and OPERATORS[op](have, want)
        if not ok:
            return False
    return True


def _query_list(query: dict, name: str) -> list[str]:
    return [v for item in query.get(name, []) for v in item.split(",") if v]


class _Handler(BaseHTTPRequestHandler):
    portal: Portal

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict | None, headers: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        path = urlsplit(self.path).path
        with self.portal.lock:
            self.portal.requests.append((self.command, path, status))

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self) -> None:
        portal = self.portal
        if self.headers.get("Authorization") != f"Bearer {portal.token}":
            return self._send(
                401, _error("Authentication credentials not found", "INVALID_AUTHENTICATION")
            )
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        method = self.command
        if parts[:3] == ["crm", "v3", "objects"] and len(parts) == 5 and parts[4] == "search":
            body = self._body()
            with portal.lock:
                portal.searches.append((parts[3], body))
            if portal.search_delay:
                time.sleep(portal.search_delay)
            with portal.lock:
                if portal.rate_limit_searches > 0:
                    portal.rate_limit_searches -= 1
                    limited = True
                else:
                    limited = False
                    status, answer = portal.search(parts[3], body)
            if limited:
                return self._send(
                    429,
                    {
                        "status": "error",
                        "message": "You have reached your secondly limit.",
                        "errorType": "RATE_LIMIT",
                        "correlationId": "fake",
                        "policyName": "SECONDLY",
                    },
                    {"Retry-After": "1"},
                )
            return self._send(status, answer)
        if parts[:3] == ["crm", "v3", "objects"] and len(parts) == 4:
            object_type = parts[3]
            if method == "GET":  # the listing; Revorch reads only the archived one
                archived = query.get("archived", ["false"])[0].lower() == "true"
                limit, after = int(query.get("limit", ["10"])[0]), int(query.get("after", ["0"])[0])
                with portal.lock:
                    rows = sorted(
                        (
                            r
                            for r in portal.records.get(object_type, {}).values()
                            if (r["archived_ms"] is not None) == archived
                        ),
                        key=lambda r: int(r["id"]),
                    )
                    wanted = _query_list(query, "properties")
                    answer = {
                        "results": [
                            portal.shape(r, wanted, object_type)
                            for r in rows[after : after + limit]
                        ]
                    }
                if after + limit < len(rows):
                    answer["paging"] = {"next": {"after": str(after + limit), "link": "?after="}}
                return self._send(200, answer)
            if method == "POST":  # create (tasks)
                body = self._body()
                with portal.lock:
                    portal._next_id += 1
                    new_id = str(portal._next_id)
                    portal._clock = max(portal._clock + 1, int(time.time() * 1000))
                    portal.add(object_type, new_id, portal._clock, **body.get("properties", {}))
                    record = portal.records[object_type][new_id]
                    record["associations"] = body.get("associations", [])
                    answer = portal.shape(record, list(body.get("properties", {})), object_type)
                return self._send(201, answer)
        if parts[:3] == ["crm", "v3", "objects"] and len(parts) == 5:
            object_type, object_id = parts[3], parts[4]
            with portal.lock:
                record = portal.records.get(object_type, {}).get(object_id)
                if record is None or record["archived_ms"] is not None:
                    return self._send(404, _error("resource not found", "OBJECT_NOT_FOUND"))
                if method == "GET":
                    answer = portal.shape(record, _query_list(query, "properties"), object_type)
                    return self._send(200, answer)
            if method == "PATCH":
                body = self._body()
                with portal.lock:
                    portal._modify(
                        object_type, object_id, body["properties"], ("INTEGRATION", "revorch")
                    )
                    answer = portal.shape(record, list(body["properties"]), object_type)
                return self._send(200, answer)
        if parts[:3] == ["crm", "v3", "objects"] and parts[4:] == ["batch", "read"]:
            body = self._body()
            if len(body["inputs"]) > 50 and body.get("propertiesWithHistory"):
                return self._send(400, _error("at most 50 inputs with history", "VALIDATION_ERROR"))
            results = []
            with portal.lock:
                for item in body["inputs"]:
                    record = portal.records.get(parts[3], {}).get(item["id"])
                    if record is None:
                        continue
                    shaped = portal.shape(record, body.get("properties"), parts[3])
                    kept = portal.history.get((parts[3], item["id"]), {})
                    shaped["propertiesWithHistory"] = {
                        name: kept.get(name, []) for name in body.get("propertiesWithHistory", [])
                    }
                    results.append(shaped)
            now = iso(int(time.time() * 1000))
            return self._send(
                200,
                {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now},
            )
        if parts[:3] == ["crm", "v4", "associations"] and parts[5:] == ["batch", "read"]:
            from_type, to_type = parts[3], parts[4]
            ids = [i["id"] for i in self._body()["inputs"]]
            now = iso(int(time.time() * 1000))
            results = []
            with portal.lock:
                for object_id in ids:
                    found = portal.associations.get((from_type, object_id, to_type))
                    if found:
                        results.append(
                            {
                                "from": {"id": object_id},
                                "to": [
                                    {
                                        "toObjectId": int(to_id),
                                        "associationTypes": [
                                            {
                                                "category": "HUBSPOT_DEFINED",
                                                "typeId": t,
                                                "label": "Primary" if t in (1, 5) else None,
                                            }
                                        ],
                                    }
                                    for to_id, t in found
                                ],
                            }
                        )
            return self._send(
                200,
                {"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now},
            )
        if parts[:3] == ["crm", "v3", "owners"]:
            archived = query.get("archived", ["false"])[0].lower() == "true"
            rows = [o for o in portal.owners if o["archived"] == archived]
            return self._send(200, {"results": rows})
        return self._send(404, _error(f"no route {method} {url.path}", "OBJECT_NOT_FOUND"))

    do_GET = do_POST = do_PATCH = _route


class FakeHubSpot:
    """``with FakeHubSpot() as hubspot:`` a portal served on 127.0.0.1 (``hubspot.url``)."""

    def __init__(self, portal: Portal | None = None) -> None:
        self.portal = portal or Portal()
        handler = type("Handler", (_Handler,), {"portal": self.portal})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHubSpot:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
