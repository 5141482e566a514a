"""Incremental Salesforce polling over the REST API, through simple-salesforce.

For each object, one SOQL query takes the records changed since the cursor
(``SystemModstamp``, ties broken by ``Id``, in that order, paged by ``nextRecordsUrl``), and
the deleted-records resource the deletes since the last poll. Every batch is landed before
the cursor moves past it, and event ids are derived from the record version
(``salesforce:<Object>:<Id>:<SystemModstamp>``), so a re-poll after a crash only brings
duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from revorch.landing import LandingZone
from revorch.sources.salesforce.cursor import CursorFile
from revorch.sources.salesforce.mapping import (
    FIELDS,
    SOBJECTS,
    ValueMaps,
    change_source,
    is_converted_lead,
    iso_timestamp,
    to_properties,
)

if TYPE_CHECKING:  # simple-salesforce (with zeep) takes most of a second to import
    from simple_salesforce import Salesforce

SOURCE = "salesforce"
# Compound fields (addresses, geolocations) come again as their component fields.
_COMPOUND_TYPES = frozenset({"address", "location"})
_SALESFORCE_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
# Users are deactivated, never deleted: the deleted-records resource does not serve them.
_NO_DELETED_RESOURCE = frozenset({"User"})
# The deleted-records resource works in whole minutes.
_DELETED_MIN_WINDOW = timedelta(minutes=1)


@dataclass
class PollSummary:
    """What one poll landed, per Salesforce object."""

    changed: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0


class SalesforcePoller:
    """Lands changed and deleted records of ``sobjects`` from ``sf`` into ``zone``."""

    def __init__(
        self,
        sf: Salesforce,
        zone: LandingZone,
        cursor: CursorFile,
        *,
        sobjects: Sequence[str] = SOBJECTS,
        maps: ValueMaps | None = None,
        fields: dict[str, list[str]] | None = None,
        batch_size: int = 2_000,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sf = sf
        self.zone = zone
        self.cursor = cursor
        self.sobjects = tuple(sobjects)
        self.maps = maps or ValueMaps()
        self._fields = dict(fields or {})
        self.batch_size = batch_size
        self.now = now

    def poll(self) -> PollSummary:
        """One incremental pass over every object: changes, then deletes."""
        summary = PollSummary()
        for sobject in self.sobjects:
            started = self.now()
            state = self.cursor.load().get(sobject, {})
            where = _after(state.get("modstamp"), state.get("id"))
            summary.changed[sobject] = 0
            for batch in _chunks(self._query(sobject, where), self.batch_size):
                self._land(batch, summary)
                summary.changed[sobject] += len(batch)
                last = batch[-1]["_record"]
                self._advance(sobject, modstamp=last["SystemModstamp"], id=last["Id"])
            if sobject not in _NO_DELETED_RESOURCE:
                summary.deleted[sobject] = self._poll_deleted(sobject, started, summary)
        return summary

    def read_records(self, sobject: str, ids: Iterable[str]) -> tuple[list[dict], set[str]]:
        """Events for the records ``ids`` as they are now, and the ids not found (deleted, or
        not visible to this user): how a change-event gap is filled."""
        wanted = [_checked_id(record_id) for record_id in ids]
        events: list[dict] = []
        for start in range(0, len(wanted), 200):
            quoted = ", ".join(f"'{record_id}'" for record_id in wanted[start : start + 200])
            events += self._query(sobject, f"Id IN ({quoted})")
        found = {event["_record"]["Id"] for event in events}
        return [_public(event) for event in events], set(wanted) - found

    def changed_since(self, sobject: str, moment: datetime) -> list[dict]:
        """Events for every ``sobject`` record changed at or after ``moment``."""
        return [_public(e) for e in self._query(sobject, f"SystemModstamp >= {_soql_time(moment)}")]

    # -- internals ------------------------------------------------------------------------------

    def _query(self, sobject: str, where: str | None) -> Iterator[dict]:
        soql = f"SELECT {', '.join(self._field_names(sobject))} FROM {sobject}"
        if where:
            soql += f" WHERE {where}"
        soql += " ORDER BY SystemModstamp, Id"
        for record in self.sf.query_all_iter(soql):
            yield self.record_event(sobject, record)

    def record_event(self, sobject: str, record: dict[str, Any]) -> dict:
        """The landing event of one queried record (its version at ``SystemModstamp``)."""
        modstamp = iso_timestamp(record["SystemModstamp"])
        fields = {k: v for k, v in record.items() if k != "attributes"}
        event = {
            "event_id": f"{SOURCE}:{sobject}:{record['Id']}:{modstamp}",
            "object_type": _object_type(sobject),
            "object_id": record["Id"],
            "occurred_at": modstamp,
            # The last user to change it (the version landed is the record at its modstamp).
            "source": change_source(user_id=record.get("LastModifiedById")),
            "_record": record,
        }
        if is_converted_lead(sobject, fields):
            return event | {"op": "delete"}
        return event | {
            "op": "upsert",
            "properties": to_properties(sobject, fields, modstamp, self.maps),
        }

    def _field_names(self, sobject: str) -> list[str]:
        if sobject not in self._fields:
            described = getattr(self.sf, sobject).describe()["fields"]
            self._fields[sobject] = [
                f["name"] for f in described if f.get("type") not in _COMPOUND_TYPES
            ]
        names = self._fields[sobject]
        # The cursor and the mapping need these whatever the configuration lists.
        return list(dict.fromkeys(["Id", "SystemModstamp", *names]))

    def _poll_deleted(self, sobject: str, started: datetime, summary: PollSummary) -> int:
        state = self.cursor.load().get(sobject, {})
        if "deleted_from" not in state:
            # First poll: the query above saw no deleted record; deletes count from now on.
            self._advance(sobject, deleted_from=iso_timestamp(started))
            return 0
        start = datetime.fromisoformat(state["deleted_from"])
        end = self.now()
        if end - start < _DELETED_MIN_WINDOW:
            return 0
        result = getattr(self.sf, sobject).deleted(start, end)
        events = []
        for row in result.get("deletedRecords", []):
            deleted_at = iso_timestamp(row["deletedDate"])
            events.append(
                {
                    "event_id": f"{SOURCE}:{sobject}:{row['id']}:deleted:{deleted_at}",
                    "object_type": _object_type(sobject),
                    "object_id": row["id"],
                    "occurred_at": deleted_at,
                    "op": "delete",
                }
            )
        if events:
            self._land(events, summary)
        self._advance(sobject, deleted_from=iso_timestamp(result["latestDateCovered"]))
        return len(events)

    def _land(self, events: list[dict], summary: PollSummary) -> None:
        self.zone.write_events(SOURCE, [_public(event) for event in events])
        summary.batches += 1

    def _advance(self, sobject: str, **position: str) -> None:
        state = self.cursor.load()
        state.setdefault(sobject, {}).update(position)
        self.cursor.save(state)


def _object_type(sobject: str) -> str:
    return FIELDS[sobject][0]


def _after(modstamp: str | None, record_id: str | None) -> str | None:
    """Records after the cursor in (SystemModstamp, Id) order. SOQL literals are whole
    seconds, so the cursor's own second is read again: its records are duplicates."""
    if modstamp is None:
        return None
    second = _soql_time(datetime.fromisoformat(modstamp))
    later_id = f"Id > '{_checked_id(record_id)}'"
    return f"(SystemModstamp > {second} OR (SystemModstamp = {second} AND {later_id}))"


def _soql_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checked_id(record_id: str | None) -> str:
    if record_id is None or not _SALESFORCE_ID.match(record_id):
        raise ValueError(f"not a Salesforce record id: {record_id!r}")
    return record_id


def _public(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "_record"}


def _chunks(events: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
