"""Agents build inputs only for what changed since their last run (revorch/agents/incremental.py),
decide as a full recompute would, make no model call when nothing changed, and never skip a
change when a run dies before recording."""

import dataclasses
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from conftest import CrmHome, event, ingest_and_stage
from fake_openai import FakeOpenAI
from resources import default_resources
from resources.agents import LlmResource
from revorch import clock
from revorch.agents import incremental
from revorch.agents.config import LlmWhen, load_agents_config
from revorch.agents.models import offline_tier
from revorch.agents.registry import (
    ALL_IDS,
    OUTPUTS,
    agent_specs,
    decide_in_slices,
    inputs_to_decide,
)
from revorch.agents.runtime import keep_open, run_agent, worst_case_cost
from revorch.lifecycle.config import load_lifecycle_config

CONFIG = load_agents_config()
LIFECYCLE = load_lifecycle_config()
LEADS = "lead_qualification"
# A fixed rule clock after the shared CRM was built, so two runs read the same "now".
NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
CLOCK = NOW.isoformat()
DECISIONS = "SELECT agent, entity_id, input_hash, model, output FROM agents.decisions"


@pytest.fixture
def home(copy_crm):
    """The shared CRM after its agents decided (on the wall clock)."""
    return copy_crm("decided")


def connect(home_or_path):
    conn = home_or_path.connect()
    clock.bind(conn, CLOCK)
    return conn


def decide(conn, name, *, full=False, llm=None, settings=None, spec=None):
    """One agent run as the asset does it: plan, build, decide, record with the watermark."""
    spec = spec or agent_specs(offline_tier(conn, config=LIFECYCLE))[name]
    settings = settings or CONFIG.agents[name]
    items, scope = inputs_to_decide(conn, spec, settings, LIFECYCLE, full_rebuild=full)
    client = llm.client(CONFIG, settings.model) if llm else None
    report = run_agent(
        keep_open(conn), spec, CONFIG, items, llm=client, run_id="t", settings=settings,
        seen=scope.seen,
    )  # fmt: skip
    return items, scope, report


def open_leads(conn, n):
    return [
        row[0]
        for row in conn.execute(
            "SELECT entity_id FROM stages.entity_stages WHERE entity_type = 'contact' "
            "AND stage = 'lead' ORDER BY entity_id LIMIT ?",
            [n],
        ).fetchall()
    ]


def change_contacts(home, retitled, engaged):
    """New job titles for ``retitled``, a reply from each of ``engaged``, through ingestion and
    the stages as a run would take them."""
    at = (NOW - timedelta(hours=2)).isoformat()
    events = [
        event(f"t-title-{c}", "contact", c, at, job_title="Chief Incremental Officer")
        for c in retitled
    ] + [
        event(f"t-act-{c}", "activity", f"act-t-{c}", at, contact_id=c,
              activity_type="email_replied", activity_at=at, subject="Re: pricing")
        for c in engaged
    ]  # fmt: skip
    home.landing.write_events("test", events)
    ingest_and_stage(home.database, home.landing, clock_setting=CLOCK)


def test_a_run_with_nothing_changed_builds_no_input_and_calls_no_model(home):
    conn = connect(home)
    for name in OUTPUTS:  # the first run at this clock: what moved since the build
        decide(conn, name)
    every = LlmWhen(value_field="touches_total", value_at_least=0)  # any input would be sent
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="test-key")
        for name in OUTPUTS:
            settings = CONFIG.agents[name].model_copy(update={"llm_when": every})
            items, scope, report = decide(conn, name, llm=llm, settings=settings)
            assert (scope.why, scope.ids, items) == ("unchanged", [], [])
            assert report.inputs == report.calls == 0
        assert server.total_requests == 0
    conn.close()


def test_a_change_to_a_few_contacts_rebuilds_those_and_decides_as_a_full_recompute(
    home, tmp_path, state_copy
):
    conn = connect(home)
    for name in OUTPUTS:
        decide(conn, name)
    leads = open_leads(conn, 6)
    conn.close()
    change_contacts(home, leads[:3], leads[3:])
    incremental = connect(home)  # on DuckLake this test's lake, before the copy's is named
    with state_copy(home.database, tmp_path / "full" / "revorch.duckdb") as copy:
        full = connect(CrmHome(copy.parent))

        built = {}
        for name in OUTPUTS:
            items, _, _ = decide(incremental, name)
            everything, full_scope, _ = decide(full, name, full=True)
            assert full_scope.ids is None and len(everything) >= len(items)
            by_id = {item["id"]: item for item in everything}
            # What the incremental run built is what the full one built for the same items.
            assert all(by_id[item["id"]] == item for item in items), name
            built[name] = {item["id"] for item in items}

        still_open = set(
            open_leads(incremental, 10**6)
            + [r[0] for r in incremental.execute(
                "SELECT entity_id FROM stages.entity_stages WHERE entity_type = 'contact' "
                "AND stage IN ('mql', 'sql')").fetchall()]
        )  # fmt: skip
        assert built[LEADS] == set(leads) & still_open and set(leads[:3]) <= built[LEADS]
        assert set(incremental.execute(DECISIONS).fetchall()) == set(
            full.execute(DECISIONS).fetchall()
        )
        retitled = incremental.execute(
            "SELECT count(DISTINCT entity_id) FROM agents.decisions WHERE agent = ? "
            "AND (input->>'job_title') = 'Chief Incremental Officer'",
            [LEADS],
        ).fetchone()[0]
        assert retitled == 3
        incremental.close()
        full.close()


def test_a_run_that_dies_before_recording_leaves_the_changes_for_the_next(home):
    conn = connect(home)
    for name in OUTPUTS:
        decide(conn, name)
    leads = open_leads(conn, 3)
    conn.close()
    change_contacts(home, leads, [])
    conn = connect(home)
    spec = agent_specs(offline_tier(conn, config=LIFECYCLE))[LEADS]

    def dies(item):
        raise RuntimeError("killed between building the inputs and recording the decisions")

    with pytest.raises(RuntimeError):
        decide(conn, LEADS, spec=dataclasses.replace(spec, offline=dies))
    items, scope, report = decide(conn, LEADS)
    assert scope.why == "changed" and {item["id"] for item in items} == set(leads)
    assert report.decisions_by_tier["offline"] == 3
    assert decide(conn, LEADS)[1].why == "unchanged"
    conn.close()


def test_the_assets_run_incrementally_and_a_full_rebuild_rebuilds_every_input(home, monkeypatch):
    from orch_assets.agents.assets import OFFLINE_MODELS
    from orch_assets.agents.backtest import MODEL_BACKTEST
    from revorch.definitions import materialize

    monkeypatch.setenv("REVORCH_HOME", str(home.root))
    monkeypatch.setenv("REVORCH_CLOCK", CLOCK)
    agents = dg.AssetSelection.key_prefixes(["agents"]) - dg.AssetSelection.keys(
        OFFLINE_MODELS, MODEL_BACKTEST
    )

    def run(**kwargs):
        result = materialize(agents, resources=default_resources(), **kwargs)
        return {
            e.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()
        }

    run()  # catches up with the fixed clock
    quiet = run()
    assert {m["inputs_scope"] for m in quiet.values()} == {"unchanged"}
    assert sum(m["inputs"] + m["llm_calls"] for m in quiet.values()) == 0
    with home.connect() as conn:
        before = set(conn.execute(DECISIONS).fetchall())
    rebuilt = run(full_rebuild=True)
    assert {m["inputs_scope"] for m in rebuilt.values()} == {"full_rebuild"}
    # Every input built again, none changed: each is the decision already taken.
    assert rebuilt[LEADS]["inputs"] > 100
    assert all(m["memo_hits"] == m["inputs"] for m in rebuilt.values())
    with home.connect() as conn:
        assert set(conn.execute(DECISIONS).fetchall()) == before


def test_a_clock_move_rebuilds_only_the_renewals_and_onboardings_it_touched(
    home, tmp_path, state_copy
):
    """Their stage tables are kept by key: a move of the clock rebuilds the items whose rows
    or windows it moved over, and decides as a full recompute does."""
    agents = ("renewal_risk", "onboarding_plan")
    conn = connect(home)
    for name in agents:
        decide(conn, name)
    conn.close()
    # Two days later, nothing new: the stages run at the new clock, then the agents.
    later = NOW + timedelta(days=2)
    ingest_and_stage(home.database, home.landing, clock_setting=later.isoformat())
    incremental = home.connect()  # on DuckLake this test's lake, before the copy's is named
    with state_copy(home.database, tmp_path / "full" / "revorch.duckdb") as copy:
        full = CrmHome(copy.parent).connect()
        for each in (incremental, full):
            clock.bind(each, later.isoformat())

        for name in agents:
            items, scope, _ = decide(incremental, name)
            everything, _, _ = decide(full, name, full=True)
            assert everything or name == "onboarding_plan"  # this CRM has renewals to decide
            # Onboarding inputs count days to the week: a new week rebuilds them all.
            new_week = name == "onboarding_plan" and later.isocalendar()[1] != NOW.isocalendar()[1]
            if not new_week:
                # Not rebuilt whole because the clock moved: only what it moved over, maybe none.
                assert scope.why in ("changed", "unchanged"), name
                assert len(items) < len(everything) or not everything, name
        decisions = f"{DECISIONS} WHERE agent IN {agents}"
        assert set(incremental.execute(decisions).fetchall()) == set(
            full.execute(decisions).fetchall()
        )
        incremental.close()
        full.close()


def test_stable_inputs_hash_as_the_full_normalisation_and_decide_alike_in_frames(home, monkeypatch):
    # Inputs skip the normalisation in canonical_json (memo.Stable): their text must be the
    # text of the same record normalised in full, or every memo key would change.
    from revorch.agents import memo, runtime
    from revorch.agents.registry import INPUTS

    conn = connect(home)
    built = 0
    for name, build in INPUTS.items():
        kwargs = {"config": LIFECYCLE} if name == "renewal_risk" else {}
        items = build(conn, None, **kwargs)
        built += len(items)
        assert all(type(item) is memo.Stable for item in items)
        plain = [memo._normalise(dict(item)) for item in items]
        assert [memo.canonical_json(i) for i in items] == [memo.canonical_json(p) for p in plain]
    assert built > 100
    # Decisions kept in frames of a few rows record the same rows as one frame.
    decided = []
    for rows_per_frame in (runtime.ROWS_PER_FRAME, 7):
        conn.execute("DELETE FROM agents.decisions WHERE agent = ?", [LEADS])
        monkeypatch.setattr(runtime, "ROWS_PER_FRAME", rows_per_frame)
        _, _, report = decide(conn, LEADS, full=True)
        rows = conn.execute(f"{DECISIONS} WHERE agent = ? ORDER BY ALL", [LEADS]).fetchall()
        assert report.decisions_by_tier["offline"] == len(rows) > 7
        decided.append(rows)
    assert decided[0] == decided[1]


WATERMARK = "SELECT load_id, as_of, version_key FROM agents.watermarks WHERE agent = ?"


def test_the_lead_agent_decides_every_open_lead_in_slices_as_in_one_piece(home):
    """A first run in slices of 100 ids (registry.decide_in_slices) records the decisions, the
    watermark and the report one piece does; a second run finds nothing changed, and a full
    rebuild in slices finds every decision in the memo."""
    conn = connect(home)
    spec = agent_specs(offline_tier(conn, config=LIFECYCLE))[LEADS]
    forget = [
        "DELETE FROM agents.decisions WHERE agent = ?",
        "DELETE FROM agents.watermarks WHERE agent = ?",
    ]

    def first_run(slice_ids):
        for statement in forget:
            conn.execute(statement, [LEADS])
        report, scope = decide_in_slices(
            keep_open(conn), spec, CONFIG, LIFECYCLE, llm=None, run_id="t", slice_ids=slice_ids
        )
        decided = conn.execute(f"{DECISIONS} WHERE agent = ?", [LEADS]).fetchall()
        # The items' input hashes the proposals take, and their watermark.
        hashes = conn.execute(
            "SELECT entity_id, input_hash FROM agents.item_hashes WHERE agent = ? ORDER BY ALL",
            [LEADS],
        ).fetchall()
        items_mark = conn.execute(WATERMARK, [incremental.items_watermark(LEADS)]).fetchone()
        return (
            report,
            scope,
            sorted(decided),
            conn.execute(WATERMARK, [LEADS]).fetchone(),
            hashes,
            items_mark,
        )

    whole = first_run(10**9)
    # A stale hash of an item no longer open: replaced whole by a first run in slices too.
    conn.execute("INSERT INTO agents.item_hashes VALUES (?, 'c-gone', 'x')", [LEADS])
    sliced = first_run(100)
    # Each id slice is read, decided and recorded on its own: many slices here.
    contacts = conn.execute(ALL_IDS[LEADS]).fetchall()
    assert len(contacts) > 5 * 100 and whole[1].why == sliced[1].why == "first_run"
    assert whole[0].as_metadata() == sliced[0].as_metadata()
    assert whole[0].inputs == whole[0].decisions_by_tier["offline"] > 100
    assert whole[2] == sliced[2] and whole[3] == sliced[3]
    assert whole[4] == sliced[4] and len(whole[4]) == whole[0].inputs
    assert whole[5] is not None and whole[5][:2] == sliced[5][:2] == whole[3][:2]

    again, scope = decide_in_slices(
        keep_open(conn), spec, CONFIG, LIFECYCLE, llm=None, run_id="t2", slice_ids=100
    )
    assert (scope.why, again.inputs) == ("unchanged", 0)
    rebuilt, scope = decide_in_slices(
        keep_open(conn), spec, CONFIG, LIFECYCLE, llm=None, run_id="t3", slice_ids=100,
        full_rebuild=True,
    )  # fmt: skip
    assert scope.why == "full_rebuild" and rebuilt.memo_hits == rebuilt.inputs == whole[0].inputs
    assert sorted(conn.execute(f"{DECISIONS} WHERE agent = ?", [LEADS]).fetchall()) == whole[2]
    conn.close()


def test_the_run_budget_holds_over_all_slices(home):
    """Every lead is worth a call, the run's budget pays for a few: in slices of 50 the run
    spends at most its budget in all (each slice reserves from what the earlier ones left),
    not a budget per slice."""
    conn = connect(home)
    spec = agent_specs(offline_tier(conn, config=LIFECYCLE))[LEADS]
    for statement in ("DELETE FROM agents.decisions", "DELETE FROM agents.watermarks"):
        conn.execute(statement)
    every = LlmWhen(value_field="touches_total", value_at_least=0)
    lead = inputs_to_decide(conn, spec, CONFIG.agents[LEADS], LIFECYCLE)[0][0]
    base = CONFIG.agents[LEADS]
    # About four calls at the worst case (the text sent is redacted; about the same length).
    per_run = 4.5 * worst_case_cost(spec, base, CONFIG, lead)
    budget = base.budget.model_copy(update={"per_run_usd": per_run})
    settings = base.model_copy(update={"llm_when": every, "budget": budget})
    config = CONFIG.model_copy(update={"agents": {**CONFIG.agents, LEADS: settings}})
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="test-key")
        report, _ = decide_in_slices(
            keep_open(conn), spec, config, LIFECYCLE, llm=llm.client(config, settings.model),
            run_id="t", slice_ids=50,
        )  # fmt: skip
        assert 1 <= server.total_requests == report.calls
    assert report.fallbacks["budget_exhausted"] == report.inputs - report.calls > 100
    assert 0 < report.cost_usd <= per_run
    conn.close()
