"""Incremental HubSpot polling: changed records, archived records and owners, into the
landing zone, with a cursor that survives ``kill -9``.

For each object type (contacts, companies, deals, tickets) a poll asks the CRM v3 search API
for the records modified since the cursor (a ``GTE`` filter on the last-modified property, ``LTE``
the poll's start so the set cannot grow under the paging), sorted ascending, 100 per page,
paging by ``after``. One query returns at most 10,000 results, so before the next page would
pass that cap the query restarts from the newest last-modified instant seen; records at that
instant that were already taken are skipped (the cursor keeps their ids). If the result set
shifts under the paging (its ``total`` changes: a record was modified meanwhile), the query
also restarts there, so no record is skipped by the shift.

Durability: every ``flush_pages`` pages the events are published to the landing zone as one
batch (an atomic rename), and only then is the cursor advanced, by an atomic rename of a
small JSON file. A ``kill -9`` between the two re-reads those records on the next poll;
their event ids are the same (object, id, last-modified), so the change log drops them as
duplicates. Nothing is lost and nothing counts twice.

Archived records become deletes (``GET /crm/v3/objects/{type}?archived=true``; the listing
cannot be filtered, so each poll pages through it and lands those archived since the
cursor). Associations (contact->company, deal and ticket->company and ->contact) are read per
page through the v4 batch API and become ``company_id`` / ``contact_id``. Properties that still
hold a value Revorch wrote itself (the write-back's ledger,
:mod:`revorch.sources.hubspot.own_writes`) are left out, so a write-back is never read back in.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from revorch.landing import LandingZone, durable_file
from revorch.sources.hubspot.api import SEARCH_RESULT_CAP, HubSpotApi
from revorch.sources.hubspot.mapping import (
    OBJECTS,
    SOURCE,
    ObjectMapping,
    delete_event,
    latest_change_source,
    owner_event,
    primary_association,
    to_millis,
    upsert_event,
)
from revorch.sources.hubspot.own_writes import OwnWrites, still_ours


@dataclass(frozen=True)
class PollSettings:
    objects: tuple[str, ...] = ("contacts", "companies", "deals", "tickets")
    page_size: int = 100
    flush_pages: int = 10  # pages per landing batch, and per cursor step
    # Re-read this much before the cursor: HubSpot's search index can lag a write by seconds.
    # What is read twice has the same event ids and counts once.
    lookback_seconds: float = 60.0
    owners: bool = True
    # HubSpot properties kept as they are (custom properties), per object type.
    extra_properties: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Read who made each change (property history: one more request per 50 records), so the
    # estate audit can credit a workflow's changes to it (docs/estate.md, "Attribution").
    attribution: bool = True


class Cursor:
    """How far each object type has been landed; a JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.state: dict = {"objects": {}, "archived": {}, "owners_ms": 0}
        if self.path.exists():
            self.state = json.loads(self.path.read_text())

    def since(self, object_type: str) -> tuple[int, set[str]]:
        entry = self.state["objects"].get(object_type, {"since_ms": 0, "seen": []})
        return entry["since_ms"], set(entry["seen"])

    def save(self) -> None:
        with durable_file(self.path) as handle:
            json.dump(self.state, handle, sort_keys=True)


@dataclass
class PollReport:
    counts: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing new"


class _Batches:
    """Events waiting to be landed, and the cursor change that goes with them."""

    def __init__(self, zone: LandingZone, cursor: Cursor, report: PollReport) -> None:
        self.zone, self.cursor, self.report = zone, cursor, report
        self.events: list[dict] = []

    def flush(self) -> None:
        if self.events:
            self.zone.write_events(SOURCE, self.events)  # first the events, durably
            self.report.counts["batches"] += 1
            self.events = []
        self.cursor.save()  # then how far they go


def poll(
    api: HubSpotApi,
    zone: LandingZone,
    cursor_path: Path,
    own_writes: OwnWrites,
    settings: PollSettings | None = None,
) -> PollReport:
    """Land everything changed in HubSpot since the cursor; see the module docstring."""
    settings = settings or PollSettings()
    cursor_path = Path(cursor_path)
    cursor_path.parent.mkdir(parents=True, exist_ok=True)
    # One poll at a time per cursor (a schedule and `revorch poll hubspot` may overlap);
    # an OS lock, so a killed poll holds nothing.
    try:
        with FileLock(f"{cursor_path}.lock", timeout=0):
            return _poll(api, zone, cursor_path, own_writes, settings)
    except Timeout as busy:
        raise RuntimeError(f"another HubSpot poll is running (it holds {busy.lock_file})") from None


def _poll(
    api: HubSpotApi,
    zone: LandingZone,
    cursor_path: Path,
    own_writes: OwnWrites,
    settings: PollSettings,
) -> PollReport:
    cursor, report = Cursor(cursor_path), PollReport()
    batches = _Batches(zone.ensure(), cursor, report)
    started_ms = int(time.time() * 1000)
    lookback_ms = int(settings.lookback_seconds * 1000)
    for name in settings.objects:
        mapping = OBJECTS[name]
        extra = settings.extra_properties.get(name, ())
        _changed(api, mapping, extra, batches, own_writes, settings, started_ms, lookback_ms)
        _archived(api, mapping, batches, lookback_ms)
    if settings.owners:
        _owners(api, batches, lookback_ms)
    batches.flush()
    return report


def _changed(
    api: HubSpotApi,
    mapping: ObjectMapping,
    extra: tuple[str, ...],
    batches: _Batches,
    own_writes: OwnWrites,
    settings: PollSettings,
    until_ms: int,
    lookback_ms: int,
) -> None:
    since, seen = batches.cursor.since(mapping.hubspot)
    if lookback_ms and since:
        # Re-read recent records (they come back as duplicates), in case the index lagged.
        since, seen = max(since - lookback_ms, 0), set()
    window_from = since
    properties = mapping.properties(extra)
    limit = settings.page_size
    after, fetched, total, pages = None, 0, None, 0
    counts = batches.report.counts
    while True:
        page = api.search(
            mapping.hubspot,
            properties=properties,
            filters=[
                {
                    "property_name": mapping.last_modified,
                    "operator": "GTE",
                    "value": str(window_from),
                },
                {"property_name": mapping.last_modified, "operator": "LTE", "value": str(until_ms)},
            ],
            sort_property=mapping.last_modified,
            limit=limit,
            after=after,
        )
        if total is not None and page["total"] != total:
            # A record changed under the paging and shifted the offsets: start again from the
            # newest instant taken, before anything could be skipped.
            counts[f"{mapping.revorch}/restarts"] += 1
            window_from, after, fetched, total = since, None, 0, None
            continue
        total = page["total"]
        fresh = []
        for record in page["results"]:
            modified = to_millis(
                record["properties"].get(mapping.last_modified) or record["updated_at"]
            )
            if modified < since or (modified == since and record["id"] in seen):
                continue  # taken before this window restarted
            fresh.append((record, modified))
            if modified > since:
                since, seen = modified, set()
            seen.add(record["id"])
        batches.events.extend(
            _upserts(api, mapping, extra, fresh, own_writes, attribution=settings.attribution)
        )
        counts[f"{mapping.revorch}/upserts"] += len(fresh)
        fetched += len(page["results"])
        pages += 1
        batches.cursor.state["objects"][mapping.hubspot] = {"since_ms": since, "seen": sorted(seen)}
        if pages % settings.flush_pages == 0:
            batches.flush()
        following = (page.get("paging") or {}).get("next") or {}
        if not following.get("after"):
            break
        if fetched + limit > SEARCH_RESULT_CAP:
            if since == window_from:  # a whole window at one instant: no way forward
                raise RuntimeError(
                    f"more than {SEARCH_RESULT_CAP:,} {mapping.hubspot} share the last-modified "
                    f"instant {since}; HubSpot's search cannot page past them"
                )
            counts[f"{mapping.revorch}/windows"] += 1
            window_from, after, fetched, total = since, None, 0, None
            continue
        after = following["after"]


def _upserts(
    api: HubSpotApi,
    mapping: ObjectMapping,
    extra: tuple[str, ...],
    fresh: list[tuple[dict, int]],
    own_writes: OwnWrites,
    *,
    attribution: bool,
) -> list[dict]:
    ids = [record["id"] for record, _ in fresh]
    associated = {
        column: api.associations(mapping.hubspot, to_type, ids)
        for to_type, column in mapping.associations.items()
    }
    ours = own_writes.written(mapping.hubspot, ids)
    history = (
        api.history(mapping.hubspot, ids, sorted({*mapping.columns, *extra}))
        if attribution and ids
        else {}
    )
    events = []
    for record, modified in fresh:
        skip = still_ours(record["properties"], ours.get(record["id"], {}))
        event = upsert_event(
            mapping,
            record["id"],
            modified,
            record["properties"],
            {
                column: primary_association(found.get(record["id"], []))
                for column, found in associated.items()
            },
            extra=extra,
            skip=skip,
        )
        if attribution:
            # Who made the newest change among what this version lands (not Revorch's own).
            kept = {p: v for p, v in history.get(record["id"], {}).items() if p not in skip}
            event["source"] = latest_change_source(kept)
        events.append(event)
    return events


def _archived(api: HubSpotApi, mapping: ObjectMapping, batches: _Batches, lookback_ms: int) -> None:
    since = batches.cursor.state["archived"].get(mapping.hubspot, 0)
    newest, after = since, None
    while True:
        page = api.archived(mapping.hubspot, properties=[mapping.last_modified], after=after)
        for record in page["results"]:
            archived_ms = to_millis(record.get("archived_at") or record["updated_at"])
            if archived_ms >= since - lookback_ms:
                batches.events.append(delete_event(mapping.revorch, record["id"], archived_ms))
                batches.report.counts[f"{mapping.revorch}/deletes"] += 1
            newest = max(newest, archived_ms)
        after = ((page.get("paging") or {}).get("next") or {}).get("after")
        if not after:
            break
    batches.cursor.state["archived"][mapping.hubspot] = newest


def _owners(api: HubSpotApi, batches: _Batches, lookback_ms: int) -> None:
    """Owners are few and cannot be searched: list them all, land those changed lately."""
    since = batches.cursor.state.get("owners_ms", 0)
    newest = since
    for archived in (False, True):
        after = None
        while True:
            page = api.owners(after=after, archived=archived)
            for owner in page["results"]:
                modified = to_millis(owner["updated_at"])
                if modified >= since - lookback_ms:
                    batches.events.append(owner_event(owner))
                    batches.report.counts["owner/events"] += 1
                newest = max(newest, modified)
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                break
    batches.cursor.state["owners_ms"] = newest
