from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import event
from revorch.ingestion.change_log import ingest_pending
from revorch.ingestion.current_state import refresh_current_state
from revorch.landing import LandingZone

VALID = event("e-1", "contact", "c-1", "2026-01-05T10:00:00Z", email="ann@example.com")

# One line per malformed kind, with the reason it must be quarantined for.
MALFORMED = {
    "invalid_json": b'{"event_id": "m-1", "object_type": "contact",',
    "not_an_object": b'["m-2", "contact"]',
    "missing_event_id": b'{"object_type":"contact","object_id":"c-9","occurred_at":"2026-01-01T00:00:00Z"}',
    "missing_object_id": b'{"event_id":"m-4","object_type":"contact","occurred_at":"2026-01-01T00:00:00Z"}',
    "unknown_object_type": b'{"event_id":"m-5","object_type":"spaceship","object_id":"s","occurred_at":"2026-01-01T00:00:00Z"}',
    "invalid_op": b'{"event_id":"m-6","object_type":"deal","object_id":"d","op":"merge","occurred_at":"2026-01-01T00:00:00Z"}',
    "invalid_occurred_at": b'{"event_id":"m-7","object_type":"deal","object_id":"d","occurred_at":"2026-02-30T10:00:00Z"}',
    "occurred_at_out_of_range": b'{"event_id":"m-8","object_type":"deal","object_id":"d","occurred_at":"2199-01-01T00:00:00Z"}',
    "wrong_type": b'{"event_id":"m-9","object_type":"company","object_id":"co","occurred_at":"2026-01-01T00:00:00Z","properties":{"employees":"lots"}}',
    "oversized": b'{"event_id":"m-10","object_type":"ticket","object_id":"t","occurred_at":"2026-01-01T00:00:00Z","properties":{"body":"'
    + b"x" * 300_000
    + b'"}}',
    "invalid_utf8": b'{"event_id":"m-11","object_type":"contact","object_id":"c","occurred_at":"2026-01-01T00:00:00Z","properties":{"first_name":"\xff\xfe"}}',
    "duplicate_key": b'{"event_id":"m-12","object_type":"deal","object_id":"d","occurred_at":"2026-01-01T00:00:00Z","properties":{"created_at":"2026-01-01T00:00:00Z","created_at":"not-a-date"}}',
    "non_finite_number": b'{"event_id":"m-13","object_type":"deal","object_id":"d","occurred_at":"2026-01-01T00:00:00Z","properties":{"amount":NaN}}',
    "missing_properties": b'{"event_id":"m-14","object_type":"deal","object_id":"d","occurred_at":"2026-01-01T00:00:00Z"}',
}

DEAL = '"object_type":"deal","object_id":"d","occurred_at":"2026-01-01T00:00:00Z"'
OWNER = '"object_type":"owner","object_id":"o","occurred_at":"2026-01-01T00:00:00Z"'

# Lines DuckDB's lenient reader used to load (issue 11, finding 7): reason and detail.
LENIENT = {
    "NaN amount": (
        '{"event_id":"n-1",' + DEAL + ',"properties":{"amount":NaN}}',
        ("non_finite_number", "NaN is not a JSON number"),
    ),
    "Infinity amount": (
        '{"event_id":"n-2",' + DEAL + ',"properties":{"amount":-Infinity}}',
        ("non_finite_number", "-Infinity is not a JSON number"),
    ),
    "overflowing amount": (
        '{"event_id":"n-3",' + DEAL + ',"properties":{"amount":1e999}}',
        ("non_finite_number", "1e999 is too large for a number"),
    ),
    "NaN as a string": (
        '{"event_id":"n-4",' + DEAL + ',"properties":{"amount":"NaN"}}',
        ("wrong_type", "fields: amount"),
    ),
    "trailing comma": (
        '{"event_id":"n-5",' + DEAL + ',"properties":{"amount":1},}',
        ("invalid_json", "Expecting property name enclosed in double quotes at column 119"),
    ),
    "trailing comma in properties": (
        '{"event_id":"n-6",' + DEAL + ',"properties":{"amount":1,}}',
        ("invalid_json", "Expecting property name enclosed in double quotes at column 118"),
    ),
    "duplicate property": (
        '{"event_id":"n-7",'
        + DEAL
        + ',"properties":{"created_at":"2026-01-01T00:00:00Z","created_at":"not-a-date"}}',
        ("duplicate_key", "key 'created_at' appears 2 times"),
    ),
    "duplicate envelope key": (
        '{"event_id":"n-8","event_id":"n-9",' + DEAL + ',"properties":{}}',
        ("duplicate_key", "key 'event_id' appears 2 times"),
    ),
    "duplicate key deeper down": (
        '{"event_id":"n-10",' + DEAL + ',"properties":{"extra":{"a":1,"a":2}}}',
        ("duplicate_key", "key 'a' appears 2 times"),
    ),
    "occurred_at without a time zone": (
        '{"event_id":"n-11","object_type":"deal","object_id":"d","occurred_at":"2026-01-01T09:30:00","properties":{}}',
        ("invalid_occurred_at", "occurred_at: 2026-01-01T09:30:00 (needs a time zone, e.g. Z)"),
    ),
    "occurred_at as a date": (
        '{"event_id":"n-12","object_type":"deal","object_id":"d","occurred_at":"2026-01-01","properties":{}}',
        ("invalid_occurred_at", "occurred_at: 2026-01-01 (needs a time zone, e.g. Z)"),
    ),
    "property timestamp without a time zone": (
        '{"event_id":"n-13",' + DEAL + ',"properties":{"closed_at":"2026-01-01T09:30:00"}}',
        ("wrong_type", "fields: closed_at"),
    ),
    "yes as a boolean": (
        '{"event_id":"n-14",' + OWNER + ',"properties":{"is_active":"yes"}}',
        ("wrong_type", "fields: is_active"),
    ),
    "1 as a boolean": (
        '{"event_id":"n-15",' + OWNER + ',"properties":{"is_active":1}}',
        ("wrong_type", "fields: is_active"),
    ),
    "integer event id": (
        '{"event_id":16,' + DEAL + ',"properties":{}}',
        ("missing_event_id", "event_id: 16"),
    ),
    "blank event id": (
        '{"event_id":"  ",' + DEAL + ',"properties":{}}',
        ("missing_event_id", 'event_id: "  "'),
    ),
    "blank object id": (
        '{"event_id":"n-17","object_type":"deal","object_id":" ","occurred_at":"2026-01-01T00:00:00Z","properties":{}}',
        ("missing_object_id", 'object_id: " "'),
    ),
    "upsert without properties": (
        '{"event_id":"n-18",' + DEAL + "}",
        ("missing_properties", "an upsert needs a properties object"),
    ),
    "upsert with null properties": (
        '{"event_id":"n-19",' + DEAL + ',"properties":null}',
        ("missing_properties", "an upsert needs a properties object"),
    ),
    "object for a string property": (
        '{"event_id":"n-20",' + DEAL + ',"properties":{"name":{"first":"Big"}}}',
        ("wrong_type", "fields: name"),
    ),
    "array for a string property": (
        '{"event_id":"n-21",' + DEAL + ',"properties":{"stage":["closedwon"]}}',
        ("wrong_type", "fields: stage"),
    ),
    "object for the source": (
        '{"event_id":"n-22",' + DEAL + ',"source":{"name":"crm"},"properties":{}}',
        ("wrong_type", "source is OBJECT"),
    ),
    "number with spaces": (
        '{"event_id":"n-23",' + DEAL + ',"properties":{"amount":" 12 "}}',
        ("wrong_type", "fields: amount"),
    ),
    "unknown envelope field": (
        '{"event_id":"n-24",' + DEAL + ',"operation":"delete","properties":{}}',
        ("unknown_field", "fields: operation"),
    ),
    "blank line": ("", ("blank_line", None)),
    "whitespace line": (" \t ", ("blank_line", None)),
}


def counts(conn, table):
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_each_malformed_kind_is_quarantined_with_its_reason(conn, zone, reason):
    zone.write_lines("test", [json.dumps(VALID), MALFORMED[reason]])
    result = ingest_pending(conn, zone)
    assert (result.received, result.loaded, result.quarantined) == (2, 1, 1)
    stored_reason, raw = conn.execute("SELECT reason, raw FROM quarantine").fetchone()
    assert stored_reason == reason
    expected_raw = MALFORMED[reason].decode("utf-8", errors="backslashreplace")
    assert raw == expected_raw
    assert counts(conn, "change_log") == 1


@pytest.mark.parametrize("kind", sorted(LENIENT))
def test_lines_a_lenient_json_reader_would_take_are_quarantined(conn, zone, kind):
    line, expected = LENIENT[kind]
    zone.write_lines("test", [json.dumps(VALID), line])
    result = ingest_pending(conn, zone)
    assert (result.received, result.loaded, result.quarantined) == (2, 1, 1)
    assert conn.execute("SELECT reason, detail, raw FROM quarantine").fetchone() == (
        *expected,
        line,
    )
    assert conn.execute("SELECT event_id FROM change_log").fetchall() == [("e-1",)]


def test_what_strict_input_still_accepts(conn, zone):
    """Documented acceptances: each is valid JSON in the landing format."""
    zone.write_lines(
        "test",
        [
            "\t" + json.dumps(VALID),  # JSON allows a tab before the object
            '{"event_id":"a-2",' + OWNER + ',"properties":{"is_active":"true"}}',
            '{"event_id":"a-3","object_type":"deal","object_id":42,'
            '"occurred_at":"2026-01-01T10:00:00+02:00","op":"delete"}',
            '{"event_id":"a-4",'
            + DEAL
            + ',"properties":{"amount":"1.5e3","seats":3,"custom":{"x":[1]}}}',
            '{"event_id":"a-5",' + DEAL + ',"properties":{"name":"NaN, Infinity, {a:1,}"}}',
        ],
    )
    result = ingest_pending(conn, zone)
    assert (result.received, result.loaded, result.quarantined) == (5, 5, 0)
    refresh_current_state(conn)
    assert conn.execute("SELECT id, is_active FROM owners").fetchall() == [("o", True)]
    assert conn.execute("SELECT id, amount, name, _deleted FROM deals ORDER BY id").fetchall() == [
        ("42", None, None, True),
        ("d", 1500.0, "NaN, Infinity, {a:1,}", False),
    ]


def test_wrong_types_and_impossible_dates_name_the_fields(conn, zone):
    zone.write_events(
        "test",
        [
            event(
                "w-1",
                "deal",
                "d-1",
                "2026-01-01T00:00:00Z",
                amount="a lot",
                close_date="2026-13-45",
            ),
            event("w-2", "subscription", "s-1", "2026-01-01T00:00:00Z", seats=3.5),
            event("w-3", "owner", "o-1", "2026-01-01T00:00:00Z", is_active="perhaps"),
        ],
    )
    ingest_pending(conn, zone)
    details = dict(conn.execute("SELECT event_id, detail FROM quarantine").fetchall())
    assert details == {
        "w-1": "fields: amount,close_date",
        "w-2": "fields: seats",
        "w-3": "fields: is_active",
    }


def test_strings_that_hold_the_right_type_are_accepted(conn, zone):
    # CRMs such as HubSpot send every property value as a string.
    zone.write_events(
        "test",
        [
            event(
                "s-1",
                "company",
                "co-1",
                "2026-01-01T00:00:00Z",
                employees="120",
                annual_revenue="2.5e6",
            )
        ],
    )
    ingest_pending(conn, zone)
    refresh_current_state(conn)
    assert conn.execute("SELECT employees, annual_revenue FROM companies").fetchone() == (
        120,
        2.5e6,
    )


def test_a_run_never_fails_on_malformed_input_and_counts_add_up(conn, zone):
    lines = [
        json.dumps(event(f"ok-{i}", "contact", f"c-{i}", "2026-01-01T00:00:00Z")) for i in range(5)
    ]
    zone.write_lines("test", lines + list(MALFORMED.values()) + [b"", b"   "])
    zone.write_lines("test", [*lines[:2], MALFORMED["invalid_json"]])
    result = ingest_pending(conn, zone)
    assert result.received == result.loaded + result.duplicates + result.quarantined
    # The two blank lines are counted too, as quarantined blank_line (kept once each).
    assert (result.loaded, result.duplicates, result.quarantined) == (5, 3, len(MALFORMED) + 2)
    per_batch = conn.execute(
        "SELECT sum(received), sum(loaded), sum(duplicates), sum(quarantined) FROM landing_batches"
    ).fetchone()
    assert per_batch == (result.received, 5, 3, len(MALFORMED) + 2)


def test_redelivered_batch_and_duplicate_events_have_no_second_effect(conn, zone):
    events = [
        event(f"e-{i}", "contact", "c-1", f"2026-01-0{i + 1}T00:00:00Z", lead_status=f"s{i}")
        for i in range(3)
    ]
    zone.write_events("test", events)
    ingest_pending(conn, zone)
    refresh_current_state(conn)
    before = conn.execute("SELECT * FROM contacts").fetchall()

    zone.write_events("test", events)  # the same batch, delivered again
    zone.write_lines("test", [json.dumps(events[1]), MALFORMED["invalid_json"]])
    zone.write_lines("test", [MALFORMED["invalid_json"]])
    result = ingest_pending(conn, zone)
    assert (result.loaded, result.duplicates, result.quarantined) == (0, 5, 1)
    refresh_current_state(conn)
    assert conn.execute("SELECT * FROM contacts").fetchall() == before
    assert counts(conn, "change_log") == 3
    assert counts(conn, "quarantine") == 1


def test_newest_change_of_a_field_wins_whatever_the_arrival_order(conn, zone):
    zone.write_events(
        "test", [event("e-late", "deal", "d-1", "2026-03-01T00:00:00Z", stage="closedwon")]
    )
    ingest_pending(conn, zone)
    zone.write_events(
        "test",
        [
            event(
                "e-early",
                "deal",
                "d-1",
                "2026-01-01T00:00:00Z",
                stage="qualifiedtobuy",
                amount=5000,
            )
        ],
    )
    ingest_pending(conn, zone)
    refresh_current_state(conn)
    assert conn.execute("SELECT stage, amount, _changes FROM deals").fetchone() == (
        "closedwon",
        5000.0,
        2,
    )


def test_null_clears_a_field_and_delete_marks_the_record(conn, zone):
    zone.write_events(
        "test",
        [
            event(
                "e-1",
                "contact",
                "c-1",
                "2026-01-01T00:00:00Z",
                phone="+1 555 0100",
                job_title="CTO",
            ),
            event("e-2", "contact", "c-1", "2026-01-02T00:00:00Z", phone=None),
            {**event("e-3", "contact", "c-2", "2026-01-02T00:00:00Z"), "op": "delete"},
        ],
    )
    ingest_pending(conn, zone)
    refresh_current_state(conn)
    rows = conn.execute(
        "SELECT id, phone, job_title, _deleted FROM contacts ORDER BY id"
    ).fetchall()
    assert rows == [("c-1", None, "CTO", False), ("c-2", None, None, True)]


def test_history_answers_what_was_known_at_a_time(conn, zone):
    zone.write_events(
        "test", [event("e-1", "contact", "c-1", "2026-01-01T00:00:00Z", lifecycle_stage="lead")]
    )
    ingest_pending(conn, zone)
    zone.write_events(
        "test", [event("e-2", "contact", "c-1", "2026-02-01T00:00:00Z", lifecycle_stage="customer")]
    )
    ingest_pending(conn, zone)
    as_of = dict(
        conn.execute(
            "SELECT property, value FROM record_as_of('contact', 'c-1', TIMESTAMPTZ '2026-01-15')"
        ).fetchall()
    )
    assert as_of == {"lifecycle_stage": "lead"}
    now = dict(
        conn.execute("SELECT property, value FROM record_as_of('contact', 'c-1', now())").fetchall()
    )
    assert now == {"lifecycle_stage": "customer"}
    first_load = conn.execute(
        "SELECT max(ingested_at) FROM change_log WHERE load_id = 1"
    ).fetchone()[0]
    known = dict(
        conn.execute(
            "SELECT property, value FROM record_known_at('contact', 'c-1', ?)", [first_load]
        ).fetchall()
    )
    assert known == {"lifecycle_stage": "lead"}


def test_batches_are_archived_after_ingestion(conn, zone):
    path = zone.write_events("test", [VALID])
    result = ingest_pending(conn, zone)
    assert zone.pending() == []
    assert not path.exists()
    assert [p.name for p in result.archived] == [path.name]
    assert ingest_pending(conn, zone).batches == 0


def test_a_large_load_commits_a_bounded_number_of_batches_per_transaction(conn, zone):
    lines = [
        json.dumps(event(f"b-{i}", "contact", f"c-{i}", "2026-01-01T00:00:00Z")) for i in range(7)
    ]
    for i in range(7):
        zone.write_lines(
            "test", [lines[i], MALFORMED["invalid_json"] if i == 3 else lines[max(i - 1, 0)]]
        )
    first = ingest_pending(conn, zone, max_batches=5, batches_per_transaction=2)
    # 5 of the 7 batches in transactions of 2, 2 and 1: one load id each, counts summed.
    assert (first.batches, first.loaded, first.duplicates, first.quarantined) == (5, 5, 4, 1)
    assert first.quarantine_reasons == {"invalid_json": 1}
    assert len(first.archived) == 5 and len(zone.pending()) == 2
    loads = conn.execute(
        "SELECT load_id, count(*) FROM landing_batches GROUP BY ALL ORDER BY load_id"
    ).fetchall()
    assert loads == [(1, 2), (2, 2), (3, 1)] and first.load_id == 3
    rest = ingest_pending(conn, zone, batches_per_transaction=2)
    assert (rest.batches, rest.loaded, rest.load_id) == (2, 2, 4)
    assert counts(conn, "change_log") == 7 and zone.pending() == []


def test_a_failed_write_publishes_nothing(zone):
    with pytest.raises(RuntimeError), zone.open_batch("test") as tmp:
        tmp.write_text('{"event_id": "half"')
        raise RuntimeError("source crashed mid-batch")
    assert zone.pending() == []
    assert list(zone.tmp_dir.iterdir()) == []


# --- properties: the same changes give the same state, however they arrive -------------

TIMES = [f"2026-01-{day:02d}T{hour:02d}:00:00Z" for day in (1, 2, 3) for hour in (0, 12)]

change = st.tuples(
    st.sampled_from(["contact", "deal"]),
    st.sampled_from(["x-1", "x-2", "x-3"]),
    st.sampled_from(TIMES),
    st.dictionaries(
        st.sampled_from(["owner_id", "lead_status", "name", "currency"]),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
        max_size=3,
    ),
    st.sampled_from(["upsert", "upsert", "upsert", "delete"]),
)


def _events(changes):
    return [
        {**event(f"p-{i}", otype, oid, when, **props), "op": op}
        for i, (otype, oid, when, props, op) in enumerate(changes)
    ]


def _state(conn):
    return {
        table: conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        for table in ("contacts", "deals")
    }


def _ingest_in_batches(conn, zone, events, batch_size, incremental, shard_changes=10**6):
    for start in range(0, len(events), batch_size):
        zone.write_events("test", events[start : start + batch_size])
        ingest_pending(conn, zone)
        if incremental:
            refresh_current_state(conn, shard_changes=shard_changes)
    refresh_current_state(conn, shard_changes=shard_changes)
    return _state(conn)


def _fresh(tmp_path_factory):
    import duckdb

    from revorch.state.migrate import migrate

    folder = tmp_path_factory.mktemp("store")
    connection = duckdb.connect(str(folder / "db.duckdb"))
    connection.execute("SET TimeZone = 'UTC'")
    migrate(connection)
    return connection, LandingZone(folder / "landing").ensure()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(change, min_size=1, max_size=30), seed=st.integers(0, 10_000))
def test_shuffled_duplicated_or_batched_arrival_gives_the_same_state(
    tmp_path_factory, changes, seed
):
    events = _events(changes)
    conn_a, zone_a = _fresh(tmp_path_factory)
    expected = _ingest_in_batches(conn_a, zone_a, events, len(events), incremental=False)

    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    redelivered = shuffled + shuffled[: len(shuffled) // 2]
    conn_b, zone_b = _fresh(tmp_path_factory)
    assert _ingest_in_batches(conn_b, zone_b, redelivered, 4, incremental=True) == expected

    # A full rebuild from the change log gives the same state as the incremental refreshes.
    refresh_current_state(conn_b, full_rebuild=True)
    assert _state(conn_b) == expected

    # In shards of two changes (one transaction each), built at once or batch by batch.
    conn_c, zone_c = _fresh(tmp_path_factory)
    assert _ingest_in_batches(conn_c, zone_c, shuffled, 3, True, shard_changes=2) == expected
    refresh_current_state(conn_c, full_rebuild=True, shard_changes=2)
    assert _state(conn_c) == expected
    conn_d, zone_d = _fresh(tmp_path_factory)
    assert _ingest_in_batches(conn_d, zone_d, shuffled, len(events), False, 2) == expected

    # A refresh that stopped after its shards but before the watermark moved is repeated:
    # applying the same changes again changes nothing.
    conn_b.execute("UPDATE state_watermarks SET load_id = 1 WHERE name = 'crm_current_state'")
    refresh_current_state(conn_b, shard_changes=2)
    assert _state(conn_b) == expected


def test_the_state_built_in_shards_equals_the_state_built_in_one_piece(conn, zone):
    # Runs on the file and, with --state-backend ducklake, on DuckLake (whose shards of several
    # pieces go through Parquet files too).
    first = [
        event(
            f"a-{i}",
            "contact",
            f"c-{i % 7}",
            f"2026-01-{1 + i % 9:02d}T00:00:00Z",
            job_title=f"t{i}",
        )
        for i in range(40)
    ] + [
        {**event("a-del", "contact", "c-3", "2026-01-20T00:00:00Z"), "op": "delete"},
        event("a-deal", "deal", "d-1", "2026-01-02T00:00:00Z", stage="qualifiedtobuy", amount=10),
    ]
    zone.write_events("test", first)
    ingest_pending(conn, zone)
    refresh_current_state(conn, shard_changes=10**6)
    whole = _state(conn)
    refresh_current_state(conn, full_rebuild=True, shard_changes=3)
    assert _state(conn) == whole

    # Then a batch with a late change (older than what is known of c-1), a newer one (c-2),
    # a null that clears a field and a new record, applied in shards of three changes.
    zone.write_events(
        "test",
        [
            event("b-late", "contact", "c-1", "2025-12-01T00:00:00Z", job_title="old", phone="1"),
            event("b-new", "contact", "c-2", "2026-02-01T00:00:00Z", phone="2"),
            event("b-null", "contact", "c-4", "2026-02-01T00:00:00Z", job_title=None),
            event("b-rec", "contact", "c-99", "2026-02-01T00:00:00Z", email="x@example.com"),
            event("b-deal", "deal", "d-1", "2026-02-01T00:00:00Z", stage="closedwon"),
        ],
    )
    ingest_pending(conn, zone)
    assert sum(refresh_current_state(conn, shard_changes=3).values()) == 5
    merged = _state(conn)
    refresh_current_state(conn, full_rebuild=True, shard_changes=10**6)
    assert _state(conn) == merged
    assert len(merged["contacts"]) == 8
    # c-1's newest title is t8 (January 9th): the late "old" lost; c-2's is t16 (the 8th).
    assert conn.execute(
        "SELECT job_title, phone FROM contacts WHERE id IN ('c-1', 'c-2', 'c-4') ORDER BY id"
    ).fetchall() == [("t8", "1"), ("t16", "2"), (None, None)]
