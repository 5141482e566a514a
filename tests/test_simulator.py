"""The seeded CRM simulator: reproducible, schema-true, faulty on purpose, learnable."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, history_frame, simulate_history, stream_live
from revorch.simulator.malformed import REASONS
from revorch.simulator.vocabulary import INDUSTRY_FIT, TIER_FIT, TIERS

MIGRATION = Path(__file__).parents[1] / "revorch/state/migrations/0001_crm_state.sql"
ID_PATTERNS = {
    "owner": r"own-\d{4,}",
    "company": r"co-\d{6,}",
    "contact": r"c-\d{7,}",
    "deal": r"d-\d{7,}",
    "activity": r"act-\d{8,}",
    "ticket": r"t-\d{7,}",
    "subscription": r"sub-\d{7,}",
}
REFERENCES = {
    "owner_id": "owner",
    "company_id": "company",
    "contact_id": "contact",
    "deal_id": "deal",
    "renewal_of": "subscription",
}
ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"
STAGE_ORDER = [
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
]

CLEAN = SimulationConfig(contacts=1_500, seed=7)
FAULTY = SimulationConfig(
    contacts=1_000, seed=11, batch_size=1_000, malformed_share=0.02, duplicate_share=0.03
)


def schema_columns() -> dict[str, dict[str, str]]:
    """object_type -> {property column: SQL type}, read from the state-store migration."""
    sql = MIGRATION.read_text()
    tables = {}
    for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", sql, re.S):
        columns = {}
        for line in body.splitlines():
            for piece in line.split("--")[0].split(","):
                words = piece.split()
                if len(words) >= 2 and not words[0].startswith("_") and words[0] != "id":
                    columns[words[0]] = words[1]
        tables[name] = columns
    pairs = re.findall(r"\('(\w+)', '(\w+)'\)", sql.split("INSERT INTO object_types")[1])
    return {object_type: tables[table] for object_type, table in pairs}


def parse_iso(value: str) -> datetime:
    return datetime.strptime(value, ISO_UTC).replace(tzinfo=UTC)


def type_ok(sql_type: str, value: object) -> bool:
    if sql_type == "VARCHAR":
        return isinstance(value, str) and value != ""
    if sql_type == "BIGINT":
        return isinstance(value, int) and not isinstance(value, bool)
    if sql_type == "DOUBLE":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if sql_type == "BOOLEAN":
        return isinstance(value, bool)
    if sql_type == "TIMESTAMPTZ":
        return isinstance(value, str) and parse_iso(value) is not None
    if sql_type == "DATE":
        return isinstance(value, str) and date.fromisoformat(value) is not None
    raise AssertionError(f"unexpected column type {sql_type}")


@pytest.fixture(scope="module")
def clean() -> pl.DataFrame:
    return history_frame(CLEAN)


@pytest.fixture(scope="module")
def clean_events(clean: pl.DataFrame) -> list[dict]:
    return [json.loads(line) for line in clean["line"]]


@pytest.fixture(scope="module")
def faulty() -> pl.DataFrame:
    return history_frame(FAULTY)


def test_same_seed_gives_identical_lines_and_another_seed_does_not(faulty: pl.DataFrame):
    again = history_frame(FAULTY)
    assert again["line"].to_list() == faulty["line"].to_list()
    assert again["batch"].to_list() == faulty["batch"].to_list()
    other = history_frame(SimulationConfig(**{**FAULTY.__dict__, "seed": 12}))
    assert other["line"].to_list() != faulty["line"].to_list()


def test_written_batches_match_the_frame(zone: LandingZone):
    config = SimulationConfig(contacts=300, batch_size=700, seed=3)
    summary = simulate_history(zone, config)
    frame = history_frame(config)
    files = zone.pending()
    assert [p.name for p in files] == [p.name for p in summary.paths]
    assert len(files) == summary.batches == frame["batch"].max() + 1
    for number, path in enumerate(files):
        expected = frame.filter(pl.col("batch") == number)["line"].to_list()
        assert path.read_bytes() == b"".join(line + b"\n" for line in expected)


def test_clean_lines_are_valid_events_typed_like_the_state_store(clean_events: list[dict]):
    columns = schema_columns()
    start, end = (parse_iso(f"{d}T00:00:00Z") for d in (CLEAN.start, CLEAN.end))
    assert len(clean_events) > 5 * CLEAN.contacts
    seen_ids = set()
    for event in clean_events:
        object_type = event["object_type"]
        assert re.fullmatch(r"sim-7-\d{10}", event["event_id"])
        assert re.fullmatch(ID_PATTERNS[object_type], event["object_id"])
        assert start <= parse_iso(event["occurred_at"]) < end
        assert event["op"] in ("upsert", "delete")
        seen_ids.add(event["event_id"])
        if event["op"] == "delete":
            assert "properties" not in event
            continue
        properties = event["properties"]
        assert properties, event
        for name, value in properties.items():
            assert name in columns[object_type], (object_type, name)
            assert value is not None, (event["event_id"], name)
            assert type_ok(columns[object_type][name], value), (event["event_id"], name, value)
    assert len(seen_ids) == len(clean_events)


def test_references_point_at_created_objects(clean_events: list[dict]):
    created = defaultdict(set)
    for event in clean_events:
        props = event.get("properties", {})
        if "created_at" in props or "activity_at" in props:
            created[event["object_type"]].add(event["object_id"])
    for event in clean_events:
        assert event["object_id"] in created[event["object_type"]], event
        for name, target in REFERENCES.items():
            value = event.get("properties", {}).get(name)
            if value is not None:
                assert value in created[target], (event["event_id"], name, value)


def test_funnel_rates_and_stage_order_are_realistic(clean_events: list[dict]):
    stages: dict[str, list[str]] = defaultdict(list)
    lifecycle: dict[str, set[str]] = defaultdict(set)
    deal_type = {}
    subscriptions = {}
    for event in sorted(clean_events, key=lambda e: (e["occurred_at"], e["event_id"])):
        props = event.get("properties", {})
        if event["object_type"] == "deal" and "stage" in props:
            stages[event["object_id"]].append(props["stage"])
            deal_type.setdefault(event["object_id"], props.get("deal_type"))
        if event["object_type"] == "contact" and "lifecycle_stage" in props:
            lifecycle[event["object_id"]].add(props["lifecycle_stage"])
        if event["object_type"] == "subscription" and "start_date" in props:
            subscriptions[event["object_id"]] = props
    mql = [c for c, s in lifecycle.items() if "marketingqualifiedlead" in s]
    sql = [c for c in mql if "salesqualifiedlead" in lifecycle[c]]
    assert 0.25 <= len(sql) / len(mql) <= 0.5
    new_business = [d for d, t in deal_type.items() if t == "new_business"]
    closed = [d for d in new_business if stages[d][-1] in ("closedwon", "closedlost")]
    won = [d for d in closed if stages[d][-1] == "closedwon"]
    assert 0.15 <= len(won) / len(closed) <= 0.4
    for deal, moves in stages.items():
        open_moves = [s for s in moves if s in STAGE_ORDER]
        indexes = [STAGE_ORDER.index(s) for s in open_moves]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes), (deal, moves)
        assert moves.count("closedwon") + moves.count("closedlost") <= 1
    # A deal won in the last days of the window may not have its subscription yet.
    sold_deals = {p["deal_id"] for p in subscriptions.values()}
    assert len(set(won) & sold_deals) >= 0.95 * len(won)
    for props in subscriptions.values():
        start, end = date.fromisoformat(props["start_date"]), date.fromisoformat(props["end_date"])
        assert 365 <= (end - start).days <= 366


def test_engaged_contacts_at_good_fit_companies_convert_far_more(clean_events: list[dict]):
    company_fit = {}
    contact_company, created, converted = {}, {}, set()
    for e in clean_events:
        props = e.get("properties", {})
        if e["object_type"] == "company" and "industry" in props:
            company_fit[e["object_id"]] = (
                INDUSTRY_FIT[props["industry"]] + TIER_FIT[TIERS.index(props["tier"])]
            )
        if e["object_type"] == "contact" and "created_at" in props:
            contact_company[e["object_id"]] = props["company_id"]
            created[e["object_id"]] = parse_iso(props["created_at"])
        if props.get("lifecycle_stage") == "salesqualifiedlead":
            converted.add(e["object_id"])
    early_touches = Counter()
    for e in clean_events:
        props = e.get("properties", {})
        if e["object_type"] == "activity" and "deal_id" not in props:
            contact = props["contact_id"]
            if parse_iso(props["activity_at"]) < created[contact] + timedelta(days=30):
                early_touches[contact] += 1
    frame = pl.DataFrame(
        {
            "contact": list(contact_company),
            "fit": [company_fit[c] for c in contact_company.values()],
            "touches": [early_touches[c] for c in contact_company],
            "converted": [c in converted for c in contact_company],
        }
    )
    scored = frame.with_columns(
        score=pl.col("fit").rank() + pl.col("touches").rank(),
    ).with_columns(quartile=(pl.col("score").rank("ordinal") * 4 / pl.len()).ceil())
    rates = dict(scored.group_by("quartile").agg(pl.col("converted").mean()).iter_rows())
    assert rates[4.0] > 2 * rates[1.0], rates


def test_churn_is_preceded_by_tickets_and_falling_usage():
    events = [json.loads(line) for line in history_frame(SimulationConfig(contacts=6_000))["line"]]
    status, company_of, usage = {}, {}, defaultdict(list)
    tickets = Counter()
    for e in sorted(events, key=lambda e: e["occurred_at"]):
        props = e.get("properties", {})
        if e["object_type"] == "subscription":
            if "company_id" in props:
                company_of[e["object_id"]] = props["company_id"]
            if "status" in props:
                status[e["object_id"]] = props["status"]
            if "seats_active" in props and "seats" not in props:
                usage[e["object_id"]].append(props["seats_active"])
        if e["object_type"] == "ticket" and "company_id" in props:
            tickets[props["company_id"]] += 1
    churned = [s for s, v in status.items() if v == "churned"]
    renewed = [s for s, v in status.items() if v == "renewed"]
    assert len(churned) >= 5 and len(renewed) >= 5

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def trend(sub: str) -> float:
        seats = usage[sub]
        return (seats[-1] - seats[0]) / max(seats[0], 1)

    assert mean([tickets[company_of[s]] for s in churned]) > mean(
        [tickets[company_of[s]] for s in renewed]
    )
    assert mean([trend(s) for s in churned]) < 0 < mean([trend(s) for s in renewed])


def test_some_later_changes_arrive_before_earlier_ones():
    frame = history_frame(SimulationConfig(contacts=1_000, batch_size=300))
    ordered = frame.with_row_index("arrival").sort("object_id", "arrival")
    late = ordered.with_columns(
        earlier=pl.col("occurred_at") < pl.col("occurred_at").shift(1).over("object_id"),
        across_batches=pl.col("batch") > pl.col("batch").shift(1).over("object_id"),
    )
    assert late.filter(pl.col("earlier") & pl.col("across_batches")).height > 0
    # ... but only sometimes: batches still follow time overall.
    in_order = (frame["occurred_at"].diff().drop_nulls() >= timedelta(0)).mean()
    assert in_order > 0.75
    by_batch = frame.group_by("batch").agg(pl.col("occurred_at").median()).sort("batch")
    assert by_batch["occurred_at"].is_sorted()


def test_malformed_lines_cover_every_reason_and_match_the_summary(
    zone: LandingZone, faulty: pl.DataFrame
):
    summary = simulate_history(zone, FAULTY)
    first = faulty.filter(~pl.col("duplicate"))
    emitted = Counter(first["malformed"].drop_nulls().to_list())
    assert set(emitted) == set(REASONS)
    assert emitted == Counter(summary.malformed_by_reason)
    assert summary.malformed == sum(emitted.values())
    assert emitted["oversized"] <= 5

    bad = first.filter(pl.col("malformed").is_not_null())
    assert bad["line"].n_unique() == bad.height
    valid_ids = set(faulty.filter(pl.col("malformed").is_null())["event_id"])
    assert not valid_ids & set(bad["event_id"].drop_nulls())
    for reason, line in bad.select("malformed", "line").iter_rows():
        assert refusal(line) == reason, (reason, line[:200])


def refusal(line: bytes) -> str | None:
    """An independent reading of docs/landing_zone.md's refusal rules, first match wins."""
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return "invalid_utf8"
    if len(line) > 256 * 1024:
        return "oversized"
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json"
    if not isinstance(event, dict):
        return "not_an_object"
    if not isinstance(event.get("event_id"), str) or not event["event_id"]:
        return "missing_event_id"
    if not isinstance(event.get("object_id"), str | int) or event["object_id"] == "":
        return "missing_object_id"
    if event.get("object_type") not in ID_PATTERNS:
        return "unknown_object_type"
    if event.get("op", "upsert") not in ("upsert", "delete"):
        return "invalid_op"
    try:
        occurred = parse_iso(event["occurred_at"])
    except (KeyError, ValueError):
        return "invalid_occurred_at"
    if not 1990 <= occurred.year <= datetime.now(UTC).year + 1:
        return "occurred_at_out_of_range"
    columns = schema_columns()[event["object_type"]]
    for name, value in event.get("properties", {}).items():
        if name in columns:
            try:
                if not type_ok(columns[name], value):
                    return "wrong_type"
            except ValueError:
                return "wrong_type"
    return None


def test_duplicates_repeat_earlier_lines_and_one_batch_is_redelivered(
    zone: LandingZone, faulty: pl.DataFrame
):
    summary = simulate_history(zone, FAULTY)
    assert summary.lines == summary.events + summary.malformed + summary.expected_duplicates
    assert summary.duplicate_events == pytest.approx(0.03 * summary.events, rel=0.1)

    contents = Counter(path.read_bytes() for path in zone.pending())
    assert summary.redelivered_batches == 1
    assert sorted(contents.values())[-1] == 2 and sum(contents.values()) == summary.batches

    first_seen: dict[bytes, int] = {}
    repeats = 0
    for batch, line, duplicate in faulty.select("batch", "line", "duplicate").iter_rows():
        if line in first_seen:
            assert duplicate
            repeats += 1
            assert batch > first_seen[line]
        else:
            assert not duplicate
            first_seen[line] = batch
    assert repeats == summary.expected_duplicates
    valid = faulty.filter(pl.col("malformed").is_null(), ~pl.col("duplicate"))
    assert valid["event_id"].n_unique() == valid.height == summary.events
    assert sum(summary.events_by_type.values()) == summary.events


def test_stream_live_publishes_wall_clock_batches(zone: LandingZone):
    config = SimulationConfig(contacts=500)
    before = datetime.now(UTC).replace(microsecond=0)
    paths = list(
        stream_live(zone, config, events_per_batch=60, interval_seconds=0.01, max_batches=3)
    )
    after = datetime.now(UTC)
    assert len(paths) == 3 and all(p.parent == zone.incoming_dir for p in paths)
    events = [json.loads(line) for p in paths for line in p.read_text().splitlines()]
    assert len(events) >= 3 * 40
    assert len({e["event_id"] for e in events}) == len(events)
    assert all(before <= parse_iso(e["occurred_at"]) <= after for e in events)
    assert {e["object_type"] for e in events} == {"contact", "activity", "deal", "ticket"}
    assert any("stage" in e["properties"] for e in events)
    columns = schema_columns()
    for e in events:
        for name, value in e["properties"].items():
            assert type_ok(columns[e["object_type"]][name], value), (name, value)

    # A second run never reuses the first run's ids, and a stop event ends the stream.
    stop = threading.Event()
    stream = stream_live(zone, config, events_per_batch=20, interval_seconds=30, stop=stop)
    second = [next(stream)]
    stop.set()
    second += list(stream)
    assert len(second) == 1
    again = {json.loads(line)["event_id"] for line in second[0].read_text().splitlines()}
    assert not again & {e["event_id"] for e in events}
