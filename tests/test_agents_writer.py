"""Agents do not hold the DuckDB writer while the model answers (issue 11, finding 5).

A real agent run calls a real OpenAI-compatible server on 127.0.0.1 that holds every answer
until the test lets it go. Meanwhile another process ingests a new landing batch into the same
DuckDB file, through the same Dagster instance and its ``duckdb_writer`` pool; it must finish
while the model calls are still unanswered. Budgets stay strict for runs that overlap.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from conftest import copy_into_lake, event, ingest_and_stage
from fake_openai import FakeOpenAI, example_from_schema
from orch_assets.agents.assets import OFFLINE_MODELS, agent_assets
from resources import AgentsConfigResource, LifecycleConfigResource, LlmResource, StateStore
from revorch import settings
from revorch.agents.config import Budget, LlmWhen, load_agents_config
from revorch.agents.models import offline_tier
from revorch.agents.registry import INPUTS, agent_specs
from revorch.agents.runtime import run_agent, worst_case_cost
from revorch.definitions import THROUGH_HANDOFFS
from revorch.instance import instance_config
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history
from revorch.state import access

ROOT = Path(__file__).resolve().parents[1]
AGENT = "lead_qualification"
WAIT_SECONDS = 600  # hang guard only, under pytest-timeout's 900 s: nothing here asserts a duration

# Every lead goes to the model; limits and timeouts high enough that only the test's gate
# decides when answers come.
BASE = load_agents_config()
CONFIG = BASE.model_copy(
    update={
        "limits": BASE.limits.model_copy(
            update={
                "requests_per_minute": 100_000,
                "tokens_per_minute": 100_000_000,
                "timeout_seconds": 600,
                "max_retries": 0,
            }
        ),
        "agents": {
            **BASE.agents,
            AGENT: BASE.agents[AGENT].model_copy(
                update={"llm_when": LlmWhen(value_field="touches_total", value_at_least=0)}
            ),
        },
    }
)

INGEST = """
import sys
import dagster as dg
from orch_assets.ingestion.assets import crm_change_log, crm_current_state
from resources import LandingZoneResource, StateStore

database, landing, home = sys.argv[1:]
result = dg.materialize(
    [crm_change_log, crm_current_state],
    resources={"state_store": StateStore(database=database),
               "landing_zone": LandingZoneResource(path=landing)},
    instance=dg.DagsterInstance.from_config(home),
)
sys.exit(0 if result.success else 1)
"""


class HeldModel:
    """Answers every request with a valid minimal output, but only once ``release()`` is
    called: until then the requests stay open on the server."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def __call__(self, body: dict) -> dict:
        self.gate.wait(WAIT_SECONDS)
        return example_from_schema(body["response_format"]["json_schema"]["schema"])

    def release(self) -> None:
        self.gate.set()


@pytest.fixture(scope="module")
def decided_crm(tmp_path_factory) -> Path:
    """A few hundred simulated contacts, ingested, staged, offline models trained."""
    folder = tmp_path_factory.mktemp("writer")
    zone = LandingZone(folder / "landing").ensure()
    path = folder / "revorch.duckdb"
    simulate_history(zone, SimulationConfig(contacts=300, seed=7))
    ingest_and_stage(
        path, zone, selection=THROUGH_HANDOFFS | dg.AssetSelection.assets(OFFLINE_MODELS)
    )
    return path


@pytest.fixture
def crm(decided_crm, tmp_path) -> StateStore:
    """This test's own copy of the CRM, as the state store resource; with
    ``--state-backend ducklake``, in this test's lake (no writer lock: runs write at once)."""
    if access.is_lake():
        store = StateStore(
            database=":memory:",
            backend="ducklake",
            catalog_dsn=settings.ducklake_catalog_dsn(),
            data_path=settings.ducklake_data_path(),
        )
        with store.get_connection() as conn:
            copy_into_lake(conn, decided_crm)
        return store
    path = tmp_path / "revorch.duckdb"
    shutil.copy(decided_crm, path)
    return StateStore(database=str(path))


def wait_until(condition, what: str) -> None:
    """Poll until ``condition`` holds. No deadline of its own: whatever the machine's speed,
    only the order of events is asserted; a hang is ended by pytest-timeout (pyproject.toml)."""
    while not condition():
        time.sleep(0.05)


def scalar(store: StateStore, sql: str, params=None):
    with store.get_connection() as conn:
        return conn.execute(sql, params or []).fetchone()[0]


@pytest.mark.file_only(
    "the file's one writer and the duckdb_writer pool; on DuckLake nothing holds a writer "
    "(tests/test_ducklake.py: ingestions and the dispatcher at once)"
)
def test_a_slow_model_does_not_delay_ingestion_of_other_changes(crm, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_config(home))
    instance = dg.DagsterInstance.from_config(str(home))
    agents_yaml = tmp_path / "agents.yaml"
    agents_yaml.write_text(yaml.safe_dump(CONFIG.model_dump(mode="json")))
    zone = LandingZone(tmp_path / "landing").ensure()
    with crm.get_connection() as conn:
        leads = len(INPUTS[AGENT](conn))
    assert leads > 50

    model = HeldModel()
    with FakeOpenAI(responder=model) as server:
        outcome = {}

        def agent_run():
            outcome["result"] = dg.materialize(
                [agent_assets[0]],
                resources={
                    "state_store": crm,
                    "agents": AgentsConfigResource(path=str(agents_yaml)),
                    "lifecycle": LifecycleConfigResource(
                        path=str(settings.lifecycle_config_path())
                    ),
                    "llm": LlmResource(base_url=server.base_url, api_key="test-key"),
                },
                instance=instance,
                raise_on_error=False,
            )

        agent = threading.Thread(target=agent_run)
        agent.start()
        try:
            wait_until(lambda: server.in_flight > 0, "the agent's first model call")
            # A change lands while the model still thinks; another process ingests it.
            zone.write_events(
                "webhook",
                [
                    event(
                        "e-while-the-model-thinks",
                        "contact",
                        "c-while-the-model-thinks",
                        "2026-11-30T12:00:00Z",
                        email="late@example.com",
                    )
                ],
            )
            ingest = subprocess.run(
                [sys.executable, "-c", INGEST, crm.database, str(zone.root), str(home)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=WAIT_SECONDS,
            )
            assert ingest.returncode == 0, ingest.stderr[-3000:]
            # The ingestion finished while every model call was still open, none answered.
            assert server.in_flight > 0 and sum(server.status_counts.values()) == 0
            assert agent.is_alive()
            assert scalar(
                crm, "SELECT count(*) FROM contacts WHERE id = 'c-while-the-model-thinks'"
            )
        finally:
            model.release()
            agent.join(WAIT_SECONDS)

    result = outcome["result"]
    assert result.success
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    calls = server.total_requests
    assert metadata["llm_calls"].value == calls > 0
    # The decisions and the money are recorded intact, and the reservation is settled.
    assert scalar(crm, "SELECT count(*) FROM agents.decisions") == leads
    assert scalar(crm, "SELECT count(*) FROM agents.decisions WHERE tier = 'llm'") == calls
    assert scalar(crm, "SELECT sum(calls) FROM agents.cost_ledger") == calls
    assert scalar(crm, "SELECT sum(cost_usd) FROM agents.cost_ledger") == pytest.approx(
        metadata["cost_usd"].value, abs=1e-6
    )
    assert scalar(crm, "SELECT count(*) FROM agents.budget_reservations") == 0


def test_two_overlapping_runs_cannot_exceed_the_budget_together(crm):
    with crm.get_connection() as conn:
        spec = agent_specs(offline_tier(conn))[AGENT]
        items = INPUTS[AGENT](conn)
    settings = CONFIG.agents[AGENT]
    first, second = items[:20], items[20:40]
    worst = [worst_case_cost(spec, settings, CONFIG, item) for item in items[:40]]
    # Room for the first run's three first calls, and less than any other call.
    budget = sum(worst[:3]) + min(worst) / 2
    tight = settings.model_copy(update={"budget": Budget(per_run_usd=1, per_day_usd=budget)})

    model = HeldModel()
    reports = {}
    with FakeOpenAI(responder=model) as server:
        llm = LlmResource(base_url=server.base_url, api_key="test-key")

        def run(name, batch):
            with llm.client(CONFIG, settings.model) as client:
                reports[name] = run_agent(
                    crm.get_connection, spec, CONFIG, batch, llm=client, run_id=name, settings=tight
                )

        runs = {
            name: threading.Thread(target=run, args=(name, batch))
            for name, batch in (("run-a", first), ("run-b", second))
        }
        runs["run-a"].start()
        try:
            wait_until(lambda: server.in_flight == 3, "the first run's three calls")
            # Nothing is spent yet, but the first run's reservation leaves no room.
            assert scalar(crm, "SELECT count(*) FROM agents.cost_ledger") == 0
            runs["run-b"].start()
            runs["run-b"].join(WAIT_SECONDS)
            assert not runs["run-b"].is_alive(), "the second run waited on the model"
        finally:
            model.release()
            for thread in runs.values():
                thread.join(WAIT_SECONDS)

    assert server.total_requests == 3
    assert reports["run-a"].calls == 3
    assert reports["run-b"].calls == 0
    assert reports["run-b"].fallbacks["budget_exhausted"] == len(second)
    assert scalar(crm, "SELECT sum(cost_usd) FROM agents.cost_ledger") <= budget
    assert scalar(crm, "SELECT count(*) FROM agents.budget_reservations") == 0
    assert scalar(crm, "SELECT count(*) FROM agents.decisions") == len(first) + len(second)


def test_a_reservation_left_by_a_run_that_died_still_counts(crm):
    with crm.get_connection() as conn:
        spec = agent_specs(offline_tier(conn))[AGENT]
        items = INPUTS[AGENT](conn)[:10]
        # What a run killed between its reservation and its record leaves behind.
        conn.execute(
            "INSERT INTO agents.budget_reservations "
            "VALUES ('dead', 'dead-run', ?, 'gpt-4o-mini', current_date, 5, 0.5, now())",
            [AGENT],
        )
    settings = CONFIG.agents[AGENT].model_copy(
        update={"budget": Budget(per_run_usd=1, per_day_usd=0.5)}
    )
    with FakeOpenAI() as server:
        llm = LlmResource(base_url=server.base_url, api_key="test-key")
        with llm.client(CONFIG, settings.model) as client:
            report = run_agent(
                crm.get_connection, spec, CONFIG, items, llm=client, run_id="r", settings=settings
            )
        assert server.total_requests == 0
    assert report.fallbacks["budget_exhausted"] == len(items)
    assert scalar(crm, "SELECT count(*) FROM agents.budget_reservations") == 1


@pytest.mark.file_only("the writer lock is the file's; DuckLake writers do not queue")
def test_writers_from_two_processes_queue_on_the_writer_lock(crm, caplog):
    caplog.set_level(logging.INFO)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from resources import StateStore\n"
            "with StateStore(database=sys.argv[1]).get_connection() as conn:\n"
            '    conn.execute("CREATE TABLE written_by_holder AS SELECT 1 AS x")\n'
            "    print('holding', flush=True)\n"
            "    sys.stdin.readline()\n",
            crm.database,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        seen = {}

        def writer():
            seen["rows"] = scalar(crm, "SELECT count(*) FROM written_by_holder")

        waiting = threading.Thread(target=writer)
        waiting.start()
        wait_until(lambda: "waiting for the DuckDB writer lock" in caplog.text, "the wait line")
        assert waiting.is_alive() and not seen
        holder.stdin.close()  # lets the holder finish
        waiting.join(WAIT_SECONDS)
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(WAIT_SECONDS)
    assert holder.returncode == 0
    # It waited for the holder to finish and then saw what the holder wrote.
    assert seen == {"rows": 1}
    assert "took the DuckDB writer lock after" in caplog.text


def test_overlapping_runs_on_the_same_inputs_record_each_decision_once(crm):
    with crm.get_connection() as conn:
        spec = agent_specs(offline_tier(conn))[AGENT]
        items = INPUTS[AGENT](conn)[:5]
    model = HeldModel()
    reports = {}
    with FakeOpenAI(responder=model) as server:
        llm = LlmResource(base_url=server.base_url, api_key="test-key")

        def run(name):
            with llm.client(CONFIG, CONFIG.agents[AGENT].model) as client:
                reports[name] = run_agent(
                    crm.get_connection, spec, CONFIG, items, llm=client, run_id=name
                )

        runs = [threading.Thread(target=run, args=(name,)) for name in ("run-a", "run-b")]
        for thread in runs:
            thread.start()
        try:
            # Both runs read the memo before either recorded: both ask the model.
            wait_until(lambda: server.in_flight == 2 * len(items), "both runs' calls")
        finally:
            model.release()
            for thread in runs:
                thread.join(WAIT_SECONDS)

    # Both calls are paid for; the decision is recorded once, by whichever run wrote first.
    assert scalar(crm, "SELECT sum(calls) FROM agents.cost_ledger") == 2 * len(items)
    assert scalar(crm, "SELECT count(*) FROM agents.decisions") == len(items)
    assert sorted(r.memo_hits for r in reports.values()) == [0, len(items)]
