"""Import an inventory of existing automations into the state store (docs/estate.md).

Four formats, one normalised row per automation (:class:`Automation`):

- ``hubspot``: workflows as HubSpot's automation API v4 returns them (``GET
  /automation/v4/flows``, ``POST /automation/v4/flows/batch/read`` or one ``GET
  /automation/v4/flows/{flowId}``): ``id``, ``name``, ``isEnabled``, ``objectTypeId`` or
  ``type``, ``enrollmentCriteria.type``, and the properties its actions set
  (``actions[].fields.property_name``);
- ``salesforce``: flows as the Tooling API's ``FlowDefinitionView`` lists them, JSON (a query
  result's ``records``) or CSV: ``DurableId``, ``ApiName``, ``Label``, ``IsActive``,
  ``ProcessType``, ``TriggerType``, ``TriggerObjectOrEventLabel``, and an optional
  ``FieldsWritten`` (the view does not list them; a flow's ``recordUpdates`` do);
- ``zapier``: a Zapier or Make scenario list as CSV (``id``, ``name``, ``platform``,
  ``trigger``, ``object_type``, ``fields_written``, ``status`` on/off);
- ``csv``: the normalised format itself (``id``, ``name``, ``platform``, ``trigger``,
  ``object_type``, ``fields_written``, ``enabled``, optional ``source_key``).

Every record of a file is loaded or refused with a reason. An import is keyed by the file's
content, so importing the same file again replaces its own rows and changes nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from revorch.sources.hubspot.mapping import BY_REVORCH_TYPE
from revorch.sources.salesforce.mapping import FIELDS as SALESFORCE_FIELDS

FORMATS = ("hubspot", "salesforce", "zapier", "csv")
PLATFORMS = ("hubspot", "salesforce", "zapier", "make", "other")

# HubSpot's ids of its standard objects, and the flow types that name them.
_HUBSPOT_OBJECTS = {"0-1": "contact", "0-2": "company", "0-3": "deal", "0-5": "ticket"}
_HUBSPOT_FLOW_TYPES = {
    "CONTACT_FLOW": "contact",
    "COMPANY_FLOW": "company",
    "DEAL_FLOW": "deal",
    "TICKET_FLOW": "ticket",
}
_SALESFORCE_OBJECTS = {sobject: revorch for sobject, (revorch, _) in SALESFORCE_FIELDS.items()}
_SALESFORCE_OBJECTS["Case"] = "ticket"
_TRUE = {"true", "on", "active", "enabled", "yes", "1"}
_FALSE = {"false", "off", "inactive", "disabled", "paused", "draft", "no", "0"}


class InventoryError(ValueError):
    """The file as a whole cannot be read in the format named (not JSON, no header...)."""


class Refused(ValueError):
    """One record cannot be taken: ``reason`` is one of docs/estate.md's list."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Automation:
    """One automation in the normalised form (the columns of ``estate.automations``)."""

    platform: str
    external_id: str
    name: str
    trigger: str | None
    object_type: str | None
    fields_written: tuple[str, ...]
    enabled: bool
    source_key: str = ""

    @property
    def automation_id(self) -> str:
        return f"{self.platform}:{self.external_id}"

    @property
    def key(self) -> str:
        """The change log ``source`` its changes carry (its id unless the file says)."""
        return self.source_key or self.automation_id


@dataclass(frozen=True)
class Refusal:
    row_number: int
    reason: str
    detail: str
    raw: str


@dataclass
class ImportResult:
    import_id: str
    file_name: str
    format: str
    automations: list[tuple[int, Automation]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return len(self.automations) + len(self.refusals)

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for refusal in self.refusals:
            counts[refusal.reason] = counts.get(refusal.reason, 0) + 1
        return dict(sorted(counts.items()))


def read_inventory(path: Path, fmt: str) -> ImportResult:
    """Parse ``path`` in format ``fmt``: every record becomes an automation or a refusal."""
    if fmt not in FORMATS:
        raise InventoryError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    data = path.read_bytes()
    result = ImportResult(
        hashlib.sha256(fmt.encode() + b"\0" + data).hexdigest()[:32], path.name, fmt
    )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InventoryError(f"{path.name} is not UTF-8 text ({error.reason})") from None
    records = _records(text, fmt)
    seen: set[str] = set()
    for number, (raw, record) in enumerate(records, start=1):
        try:
            automation = _PARSERS[fmt](record)
            if automation.automation_id in seen:
                raise Refused("duplicate_id", f"{automation.automation_id} appears earlier")
            seen.add(automation.automation_id)
            result.automations.append((number, automation))
        except Refused as refused:
            result.refusals.append(Refusal(number, refused.reason, refused.detail, raw))
    return result


def import_inventory(
    conn: duckdb.DuckDBPyConnection, path: Path, fmt: str, *, now: datetime | None = None
) -> ImportResult:
    """Read ``path`` and store it in ``estate.*`` in one transaction; return what was done."""
    result = read_inventory(path, fmt)
    at = now or datetime.now(UTC)
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("DELETE FROM estate.import_refusals WHERE import_id = ?", [result.import_id])
        conn.execute("DELETE FROM estate.imports WHERE import_id = ?", [result.import_id])
        ids = [a.automation_id for _, a in result.automations]
        conn.execute("DELETE FROM estate.automations WHERE list_contains(?, automation_id)", [ids])
        if result.automations:
            conn.executemany(
                "INSERT INTO estate.automations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [
                        a.automation_id,
                        a.platform,
                        a.external_id,
                        a.name,
                        a.trigger,
                        a.object_type,
                        list(a.fields_written),
                        a.enabled,
                        a.key,
                        result.import_id,
                        number,
                    ]
                    for number, a in result.automations
                ],
            )
        if result.refusals:
            conn.executemany(
                "INSERT INTO estate.import_refusals VALUES (?, ?, ?, ?, ?)",
                [
                    [result.import_id, r.row_number, r.reason, r.detail, r.raw]
                    for r in result.refusals
                ],
            )
        conn.execute(
            "INSERT INTO estate.imports VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                result.import_id,
                result.file_name,
                fmt,
                result.rows_read,
                len(result.automations),
                len(result.refusals),
                at,
            ],
        )
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return result


# --- reading a file into records (raw text, parsed record) -----------------------------------


def _records(text: str, fmt: str) -> list[tuple[str, object]]:
    stripped = text.lstrip()
    if fmt == "hubspot" or (fmt == "salesforce" and stripped[:1] in "[{"):
        return _json_records(text, "records" if fmt == "salesforce" else "results")
    return list(_csv_records(text))


def _json_records(text: str, key: str) -> list[tuple[str, object]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InventoryError(f"not JSON: {error}") from None
    if isinstance(document, dict) and isinstance(document.get(key), list):
        items = document[key]  # a list or batch response, or a Tooling API query result
    elif isinstance(document, list):
        items = document
    elif isinstance(document, dict):
        items = [document]  # one flow, as GET /automation/v4/flows/{flowId} returns it
    else:
        raise InventoryError(f"expected a JSON object with {key!r} or an array of records")
    return [(json.dumps(item, sort_keys=True), item) for item in items]


def _csv_records(text: str) -> Iterator[tuple[str, object]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise InventoryError("the CSV file has no header row")
    names = [_column_name(h) for h in header]
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # a blank line is no record
        raw = _csv_line(row)
        if len(row) != len(names):
            yield raw, Refused("wrong_column_count", f"{len(row)} fields, header has {len(names)}")
        else:
            yield raw, dict(zip(names, row, strict=True))


def _column_name(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def _csv_line(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue()


# --- one record into an Automation -------------------------------------------------------------


def _hubspot(record: object) -> Automation:
    flow = _record(record)
    flow_id = _required_text(flow, "id", "missing_id")
    object_type = _HUBSPOT_OBJECTS.get(str(flow.get("objectTypeId"))) or _HUBSPOT_FLOW_TYPES.get(
        str(flow.get("type"))
    )
    criteria = flow.get("enrollmentCriteria")
    how = criteria.get("type") if isinstance(criteria, dict) else None
    trigger = " ".join(str(p) for p in (object_type, how or flow.get("flowType")) if p)
    columns = BY_REVORCH_TYPE[object_type].columns if object_type in BY_REVORCH_TYPE else {}
    written = []
    actions = flow.get("actions") or []
    if not isinstance(actions, list):
        raise Refused("invalid_fields_written", "actions is not an array")
    for action in actions:
        fields = action.get("fields") if isinstance(action, dict) else None
        name = fields.get("property_name") if isinstance(fields, dict) else None
        if isinstance(name, str) and name:
            written.append(columns.get(name, name))
    return Automation(
        platform="hubspot",
        external_id=flow_id,
        name=_required_text(flow, "name", "missing_name"),
        trigger=trigger or None,
        object_type=object_type,
        fields_written=_unique(written),
        enabled=_boolean(flow.get("isEnabled")),
    )


def _salesforce(record: object) -> Automation:
    # Field names in any case: the JSON API answers DurableId, CSV exports often lower-case.
    flow = {str(k).lower(): v for k, v in _record(record).items()}
    flow_id = _text(flow.get("durableid")) or _text(flow.get("apiname"))
    if not flow_id:
        raise Refused("missing_id", "neither DurableId nor ApiName")
    name = _text(flow.get("label")) or _text(flow.get("apiname"))
    if not name:
        raise Refused("missing_name", "neither Label nor ApiName")
    related = flow.get("triggerobjectorevent")
    sobject = _text(flow.get("triggerobjectoreventlabel")) or (
        _text(related.get("QualifiedApiName")) if isinstance(related, dict) else None
    )
    object_type = _SALESFORCE_OBJECTS.get(sobject or "")
    columns = SALESFORCE_FIELDS[sobject][1] if sobject in SALESFORCE_FIELDS else {}
    trigger = " ".join(
        p for p in (_text(flow.get("processtype")), _text(flow.get("triggertype")), sobject) if p
    )
    written = [columns.get(f, f) for f in _field_list(flow.get("fieldswritten"))]
    return Automation(
        platform="salesforce",
        external_id=flow_id,
        name=name,
        trigger=trigger or None,
        object_type=object_type,
        fields_written=_unique(written),
        enabled=_boolean(flow.get("isactive")),
        # Salesforce names the user or API client behind a change, never the flow: a flow
        # run by its own user is matched by that user (docs/estate.md, "Attribution").
        source_key=_text(flow.get("source_key")) or "",
    )


def _zapier(record: object) -> Automation:
    row = _record(record)
    flow_id = _first(row, "id", "zap_id", "scenario_id")
    platform = (_text(row.get("platform")) or "zapier").lower()
    return _from_row(row, flow_id, platform, _first(row, "status", "enabled", "is_enabled"))


def _normalised(record: object) -> Automation:
    row = _record(record)
    platform = (_text(row.get("platform")) or "").lower()
    if not platform:
        raise Refused("unknown_platform", "platform is empty")
    return _from_row(row, _text(row.get("id")), platform, row.get("enabled"))


def _from_row(row: dict, flow_id: str | None, platform: str, enabled: object) -> Automation:
    if not flow_id:
        raise Refused("missing_id", "id is empty")
    if platform not in PLATFORMS:
        raise Refused("unknown_platform", f"{platform!r} is not one of {', '.join(PLATFORMS)}")
    name = _first(row, "name", "zap_name", "scenario_name")
    if not name:
        raise Refused("missing_name", "name is empty")
    object_type = _text(row.get("object_type"))
    if object_type and object_type not in BY_REVORCH_TYPE and object_type != "subscription":
        raise Refused("unknown_object_type", f"{object_type!r}")
    return Automation(
        platform=platform,
        external_id=flow_id,
        name=name,
        trigger=_text(row.get("trigger")),
        object_type=object_type,
        fields_written=_unique(_field_list(row.get("fields_written"))),
        enabled=_boolean(enabled),
        source_key=_text(row.get("source_key")) or "",
    )


_PARSERS = {"hubspot": _hubspot, "salesforce": _salesforce, "zapier": _zapier, "csv": _normalised}


def _record(record: object) -> dict:
    if isinstance(record, Refused):
        raise record
    if not isinstance(record, dict):
        raise Refused("not_a_record", f"a JSON {type(record).__name__}, not an object")
    return record


def _text(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # HubSpot ids may come as numbers
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _required_text(record: dict, key: str, reason: str) -> str:
    value = _text(record.get(key))
    if value is None:
        raise Refused(reason, f"{key} is absent or empty")
    return value


def _first(row: dict, *keys: str) -> str | None:
    return next((v for v in (_text(row.get(k)) for k in keys) if v), None)


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise Refused("invalid_enabled", f"{value!r} is not true/false (on/off, active/inactive)")


def _field_list(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [f.strip() for f in value.replace(",", ";").split(";") if f.strip()]
    if isinstance(value, list) and all(isinstance(f, str) for f in value):
        return [f.strip() for f in value if f.strip()]
    raise Refused("invalid_fields_written", f"{value!r} is not a list of field names")


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))
