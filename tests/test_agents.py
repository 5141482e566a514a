"""Agents end to end on a simulated CRM: offline by default, the LLM tier through the real
openai client against a server on 127.0.0.1, the memo, budgets, faults and replay."""

import json

import pytest

from fake_openai import FakeOpenAI, Fault
from resources.agents import LlmResource
from revorch.agents.config import Budget, LlmWhen, load_agents_config
from revorch.agents.models import offline_tier
from revorch.agents.registry import INPUTS, agent_specs
from revorch.agents.replay import replay_run, what_if
from revorch.agents.runtime import keep_open, run_agent

CONFIG = load_agents_config()
AGENT = "lead_qualification"


@pytest.fixture
def crm(copy_crm):
    """This test's copy of the shared simulated CRM (conftest), through its stages."""
    conn = copy_crm("stages").connect()
    yield conn
    conn.close()


def settings(**changes):
    """The lead agent's settings, sending every lead to the LLM unless changed."""
    every = LlmWhen(value_field="touches_total", value_at_least=0)
    base = CONFIG.agents[AGENT].model_copy(update={"llm_when": every})
    return base.model_copy(update=changes)


def run(conn, items, *, llm=None, run_id="run-1", agent_settings=None):
    spec = agent_specs(offline_tier(conn))[AGENT]
    client = llm.client(CONFIG, CONFIG.agents[AGENT].model) if llm else None
    return run_agent(
        keep_open(conn), spec, CONFIG, items, llm=client, run_id=run_id, settings=agent_settings
    )


def count(conn, sql="SELECT count(*) FROM agents.decisions"):
    return conn.execute(sql).fetchone()[0]


def test_offline_by_default_and_an_unchanged_input_is_never_decided_again(crm):
    items = INPUTS[AGENT](crm)
    first = run(crm, items)
    assert first.decisions_by_tier["offline"] == len(items) > 100
    assert first.cost_usd == 0 and first.calls == 0
    second = run(crm, items, run_id="run-2")
    assert second.memo_hits == len(items)
    assert count(crm) == len(items)


def test_the_llm_tier_answers_through_an_openai_compatible_url_and_rerun_makes_no_call(crm):
    items = INPUTS[AGENT](crm)[:40]
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="test-key")
        report = run(crm, items, llm=llm, agent_settings=settings())
        assert server.total_requests == report.calls == report.decisions_by_tier["llm"] == 40
        assert report.prompt_tokens > 0 and report.cost_usd > 0
        again = run(crm, items, llm=llm, run_id="run-2", agent_settings=settings())
        assert server.total_requests == 40  # zero new calls
        assert again.memo_hits == 40
    stored = crm.execute(
        "SELECT tier, model, prompt, prompt_tokens, cost_usd FROM agents.decisions LIMIT 1"
    ).fetchone()
    assert stored[0] == "llm" and stored[1] == CONFIG.agents[AGENT].model
    assert "<record>" in stored[2] and stored[3] > 0 and stored[4] > 0
    ledger = count(crm, "SELECT sum(cost_usd) FROM agents.cost_ledger")
    assert ledger == pytest.approx(report.cost_usd)


def test_prompts_leave_the_process_without_names_or_emails(crm):
    items = INPUTS[AGENT](crm)[:10]
    with FakeOpenAI() as server:
        run(
            crm,
            items,
            llm=LlmResource(base_url=server.base_url, api_key="k"),
            agent_settings=settings(),
        )
        sent = json.dumps([r["body"] for r in server.received])
    emails = [e for (e,) in crm.execute("SELECT email FROM contacts").fetchall() if e]
    assert emails and not any(email in sent for email in emails)


def test_the_budget_cap_holds_and_the_rest_falls_back_offline(crm):
    items = INPUTS[AGENT](crm)[:60]
    tiny = settings(budget=Budget(per_run_usd=0.002, per_day_usd=0.01))
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="k")
        first = run(crm, items[:30], llm=llm, agent_settings=tiny)
        assert 0 < first.calls < 30
        assert first.cost_usd <= 0.002
        assert first.fallbacks["budget_exhausted"] == 30 - first.calls
        # Spending elsewhere today used up the day budget: no call at all.
        crm.execute(
            "INSERT INTO agents.cost_ledger VALUES "
            "('earlier', ?, 'gpt-4o-mini', current_date, 1, 0, 0, 0, 0, 0.01, now())",
            [AGENT],
        )
        calls_before = server.total_requests
        second = run(crm, items[30:], llm=llm, run_id="run-2", agent_settings=tiny)
        assert server.total_requests == calls_before
    assert second.calls == 0 and second.fallbacks["budget_exhausted"] == 30
    assert count(crm) == 60  # every item decided, none lost


def test_failed_or_invalid_answers_fall_back_and_are_marked(crm):
    items = INPUTS[AGENT](crm)[:4]
    with FakeOpenAI() as server:
        server.plan(Fault.malformed_json(), Fault.schema_violation(), Fault.refusal())
        report = run(
            crm,
            items,
            llm=LlmResource(base_url=server.base_url, api_key="k"),
            agent_settings=settings().model_copy(),
        )
    assert report.decisions_by_tier == {"llm": 1, "offline": 3}
    reasons = dict(
        crm.execute(
            "SELECT fallback_reason, count(*) FROM agents.decisions "
            "WHERE fallback_reason IS NOT NULL GROUP BY 1"
        ).fetchall()
    )
    assert reasons == {"invalid_output": 2, "refusal": 1}


def test_replay_reproduces_a_run_exactly_with_no_model_call(crm):
    items = INPUTS[AGENT](crm)[:20]
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="k")
        run(crm, items, llm=llm, agent_settings=settings(llm_when=LlmWhen(confidence_below=0.5)))
        calls = server.total_requests
        specs = agent_specs(offline_tier(crm))
        replay = replay_run(crm, "run-1", specs)
        assert server.total_requests == calls
    recorded = {
        (agent, entity): json.loads(output)
        for agent, entity, output in crm.execute(
            "SELECT agent, entity_id, output FROM agents.decisions WHERE run_id = 'run-1'"
        ).fetchall()
    }
    assert replay.decisions == replay.reproduced == 20
    assert replay.outputs == recorded


def test_what_if_reports_the_decisions_another_model_would_change(crm):
    items = INPUTS[AGENT](crm)[:10]
    run(crm, items)  # offline decisions
    specs = agent_specs(offline_tier(crm))
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="k").client(CONFIG, "gpt-4o-mini")
        report = what_if(crm, "run-1", specs, prompt_version="v1", llm=llm)
        assert server.total_requests == 10
    # The server's minimal answers (score 0, first allowed action) differ from the model's.
    assert report.decisions == 10 and 0 < len(report.changed) <= 10
    assert count(crm) == 10  # nothing written


def test_the_agent_assets_materialize_offline_with_cost_metadata(simulated_crm):
    # The shared CRM (conftest) went through every asset of the definitions, with no model
    # configured, so the agents ran on the offline tier.
    metadata = simulated_crm.metadata
    lead = metadata["agents/lead_qualification"]
    assert lead["decisions_offline"].value > 0
    assert lead["llm_calls"].value == 0 and lead["cost_usd"].value == 0
    assert "latency_p95_ms" in lead


def test_consecutive_llm_failures_switch_the_rest_of_the_run_offline_at_once(crm):
    items = INPUTS[AGENT](crm)[:30]
    limits = CONFIG.limits.model_copy(
        update={"max_concurrency": 1, "max_retries": 1, "circuit_breaker_failures": 3}
    )
    config = CONFIG.model_copy(update={"limits": limits})
    with FakeOpenAI() as server:
        server.plan(*[Fault.delay(0)] * 5)  # five good answers, then the server breaks
        server.failing = Fault.status(503)
        llm = LlmResource(base_url=server.base_url, api_key="k")
        report = run_agent(
            keep_open(crm),
            agent_specs(offline_tier(crm))[AGENT],
            config,
            items,
            llm=llm.client(config, config.agents[AGENT].model),
            run_id="run-broken",
            settings=settings(),
        )
        # 5 answers, then 3 calls of 2 attempts each; after them nothing more is sent.
        assert server.total_requests == 5 + 3 * 2
    assert report.decisions_by_tier == {"llm": 5, "offline": 25}
    assert report.fallbacks == {"server_error": 3, "circuit_open": 22}
    assert llm.tier.startswith("off after 3 consecutive failures (server_error: HTTP 503")
    assert count(crm, "SELECT count(*) FROM agents.decisions WHERE run_id = 'run-broken'") == 30
