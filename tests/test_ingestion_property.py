"""Property: whatever mix of valid, malformed and repeated lines arrives, every line is
accounted for and no malformed line reaches the change log."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from revorch.ingestion.change_log import ingest_pending
from revorch.landing import LandingZone
from revorch.state.migrate import migrate

REASONS = {
    "invalid_utf8", "oversized", "blank_line", "invalid_json", "non_finite_number",
    "duplicate_key", "not_an_object", "unknown_field", "missing_event_id",
    "missing_object_id", "unknown_object_type", "invalid_op", "invalid_occurred_at",
    "occurred_at_out_of_range", "missing_properties", "wrong_type",
}  # fmt: skip

# Free text, including what the strict check looks for inside strings (NaN, braces, commas).
text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["NaN", "Infinity", ", }", "{a:1,}", '":', "1e999", "\\", '"']),
)


@st.composite
def valid_event(draw, event_id: str) -> dict:
    kind = draw(st.sampled_from(["deal", "owner", "contact"]))
    properties: dict = {"name" if kind == "deal" else "email": draw(text)}
    if kind == "deal":
        properties["amount"] = draw(
            st.one_of(st.integers(-(10**9), 10**9), st.floats(-1e9, 1e9), st.just("12.5"))
        )
        properties["close_date"] = draw(st.sampled_from(["2026-02-28", None]))
    if kind == "owner":
        properties["is_active"] = draw(st.sampled_from([True, False, "true", "FALSE", None]))
    if draw(st.booleans()):
        properties["custom_field"] = draw(st.one_of(text, st.integers(), st.none()))
    return {
        "event_id": event_id,
        "object_type": kind,
        "object_id": draw(st.one_of(st.sampled_from(["x-1", "x-2"]), st.integers(1, 5))),
        "occurred_at": draw(st.sampled_from(["2026-01-01T09:30:00Z", "2026-01-02T10:00:00+02:00"])),
        "op": draw(st.sampled_from(["upsert", "upsert", "delete"])),
        "properties": properties,
    }


def _line(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False)


def _deal(event_id: str, **properties) -> dict:
    return {
        "event_id": event_id,
        "object_type": "deal",
        "object_id": "d-1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "properties": properties,
    }


def _malformed_lines(event_id: str) -> dict[str, str | bytes]:
    """One malformed line of every kind, each carrying event_id when it has one."""
    good = _line(_deal(event_id, amount=1))
    return {
        "nan": good.replace('"amount": 1', '"amount": NaN'),
        "infinity": good.replace('"amount": 1', '"amount": -Infinity'),
        "overflow": good.replace('"amount": 1', '"amount": 1e999'),
        "nan_text": _line(_deal(event_id, amount="NaN")),
        "trailing_comma": good[:-1] + ",}",
        "trailing_comma_inside": good.replace('"amount": 1', '"amount": 1,'),
        "duplicate_property": good.replace('"amount": 1', '"amount": 1, "amount": "x"'),
        "duplicate_envelope_key": good.replace("{", '{"op": "delete", "op": "upsert", ', 1),
        "unknown_field": good.replace("{", '{"operation": "delete", ', 1),
        "no_time_zone": good.replace("00:00:00Z", "00:00:00"),
        "property_without_time_zone": _line(_deal(event_id, closed_at="2026-01-01T10:00:00")),
        "yes_boolean": _line({**_deal(event_id, is_active="yes"), "object_type": "owner"}),
        "one_boolean": _line({**_deal(event_id, is_active=1), "object_type": "owner"}),
        "integer_event_id": good.replace(f'"{event_id}"', "7", 1),
        "blank_event_id": good.replace(f'"{event_id}"', '"   "', 1),
        "blank_object_id": good.replace('"d-1"', '" "'),
        "no_properties": _line({k: v for k, v in _deal(event_id).items() if k != "properties"}),
        "object_for_string": _line(_deal(event_id, name={"first": "x"})),
        "array_for_string": _line(_deal(event_id, stage=["closedwon"])),
        "properties_not_object": _line({**_deal(event_id), "properties": "amount=1"}),
        "source_not_string": _line({**_deal(event_id), "source": ["crm"]}),
        "not_json": "not json " + event_id,
        "not_an_object": json.dumps([event_id]),
        "unknown_type": _line({**_deal(event_id), "object_type": "spaceship"}),
        "invalid_op": _line({**_deal(event_id), "op": "merge"}),
        "impossible_date": good.replace("2026-01-01T", "2026-02-30T"),
        "far_future": good.replace("2026-01-01T", "2199-01-01T"),
        "invalid_utf8": good.encode().replace(b"deal", b"de\xffal"),
        "blank": "",
        "whitespace": " \t ",
    }


KINDS = sorted(_malformed_lines("k"))


@st.composite
def deliveries(draw):
    """Batches of lines: (line, valid event id or None), with repeats of earlier lines."""
    lines: list[tuple[str | bytes, str | None]] = []
    for i in range(draw(st.integers(1, 25))):
        choice = draw(st.sampled_from(["valid", "valid", "tab", "malformed", "repeat"]))
        if choice == "repeat" and lines:
            lines.append(draw(st.sampled_from(lines)))
        elif choice == "malformed":
            kind = draw(st.sampled_from(KINDS))
            lines.append((_malformed_lines(f"bad-{i}")[kind], None))
        else:
            event = draw(valid_event(f"ok-{i}"))
            prefix = "\t" if choice == "tab" else ""  # JSON allows leading whitespace
            lines.append((prefix + _line(event), event["event_id"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(lines)), max_size=3)))
    bounds = [0, *cuts, len(lines)]
    return [lines[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _ingest(batches, ingestions: int):
    with tempfile.TemporaryDirectory() as folder:
        conn = duckdb.connect(str(Path(folder) / "db.duckdb"))
        conn.execute("SET TimeZone = 'UTC'")
        migrate(conn)
        zone = LandingZone(Path(folder) / "landing").ensure()
        results = []
        for index, batch in enumerate(batches):
            zone.write_lines("test", [line for line, _ in batch])
            if index % ingestions == 0 or index == len(batches) - 1:
                results.append(ingest_pending(conn, zone))
        loaded = {row[0] for row in conn.execute("SELECT event_id FROM change_log").fetchall()}
        reasons = {row[0] for row in conn.execute("SELECT reason FROM quarantine").fetchall()}
        per_batch = conn.execute(
            "SELECT count(*) FILTER (WHERE received <> loaded + duplicates + quarantined) "
            "FROM landing_batches"
        ).fetchone()[0]
        conn.close()
    return results, loaded, reasons, per_batch


@settings(max_examples=15, deadline=None)
@given(batches=deliveries(), ingestions=st.integers(1, 3))
def test_every_line_is_accounted_for_and_no_malformed_line_loads(batches, ingestions):
    results, loaded, reasons, unbalanced_batches = _ingest(batches, ingestions)
    lines = [item for batch in batches for item in batch]
    received = sum(r.received for r in results)
    assert received == len(lines)
    assert received == sum(r.loaded + r.duplicates + r.quarantined for r in results)
    assert unbalanced_batches == 0
    valid_ids = {event_id for _, event_id in lines if event_id is not None}
    assert loaded == valid_ids  # every valid event, and nothing else
    assert sum(r.loaded for r in results) == len(valid_ids)
    malformed = {line for line, event_id in lines if event_id is None}
    assert sum(r.quarantined for r in results) == len(malformed)
    assert reasons <= REASONS
