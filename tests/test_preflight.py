"""The LLM endpoint is checked once before a run; a wrong setup sends the run offline at once."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from fake_openai import FakeOpenAI, Fault
from revorch.agents.preflight import check_llm_endpoint
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history

MODELS = {"gpt-4o-mini"}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """The landing zone `revorch simulate --contacts 300` writes (its default seed), written
    once for the module's ingests; each copies it into its own folder."""
    landing = tmp_path_factory.mktemp("preflight") / "landing"
    simulate_history(LandingZone(landing).ensure(), SimulationConfig(contacts=300, seed=42))
    return landing


def test_a_server_that_serves_the_model_passes():
    with FakeOpenAI(served_model="gpt-4o-mini") as server:
        found = check_llm_endpoint(server.base_url, "k", MODELS)
        assert server.models_listed == 1
    assert found.online
    assert found.line == f"LLM tier: the agents will use gpt-4o-mini at {server.base_url}."


@pytest.mark.parametrize(
    ("server_key", "served", "said", "reason"),
    [
        ("right-key", "gpt-4o-mini", "refused the key (HTTP 401", "preflight: key_refused"),
        (
            None,
            "llama3",
            "does not serve gpt-4o-mini (it serves llama3)",
            "preflight: model_not_served",
        ),
    ],
)
def test_a_refused_key_or_a_missing_model_sends_the_run_offline(server_key, served, said, reason):
    with FakeOpenAI(served_model=served, api_key=server_key) as server:
        found = check_llm_endpoint(server.base_url, "wrong-key", MODELS)
    assert found.offline_reason == reason
    assert said in found.line
    assert found.line.endswith("the agents will decide offline for this run.")


def test_an_unreachable_endpoint_sends_the_run_offline():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    found = check_llm_endpoint(url, "k", MODELS)
    assert found.offline_reason == "preflight: unreachable"
    assert f"the LLM endpoint {url} is unreachable" in found.line


@pytest.mark.slow
def test_an_ingest_with_a_refused_key_decides_offline_without_calling_the_model(
    simulated, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    env.pop("OPENAI_API_KEY", None)
    revorch = [sys.executable, "-m", "revorch.cli"]
    shutil.copytree(simulated, tmp_path / ".revorch" / "landing")
    # The URL is set and the key is not (finding 5); the server wants a key.
    with FakeOpenAI(served_model="gpt-4o-mini", api_key="the-real-key") as server:
        env["REVORCH_LLM_BASE_URL"] = server.base_url
        done = subprocess.run(
            [*revorch, "ingest"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr
        assert server.total_requests == 0  # not one chat completion after the failed check
    assert (
        f"LLM tier: the LLM endpoint {server.base_url} refused the key (HTTP 401; check "
        "OPENAI_API_KEY); the agents will decide offline for this run." in done.stdout
    )
    database = tmp_path / ".revorch" / "revorch.duckdb"
    with duckdb.connect(str(database), read_only=True) as conn:
        tiers = dict(
            conn.execute("SELECT tier, count(*) FROM agents.decisions GROUP BY ALL").fetchall()
        )
    # Decisions the LLM tier would have been asked for (122 with a good key) were taken offline.
    assert set(tiers) == {"offline"} and tiers["offline"] > 0


@pytest.mark.slow
def test_an_endpoint_that_breaks_mid_run_trips_the_breaker_and_the_summary_says_so(
    simulated, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    env.pop("OPENAI_API_KEY", None)
    revorch = [sys.executable, "-m", "revorch.cli"]
    shutil.copytree(simulated, tmp_path / ".revorch" / "landing")
    # The models listing passes the preflight; then every completion fails.
    with FakeOpenAI(served_model="gpt-4o-mini") as server:
        server.failing = Fault.status(503)
        env["REVORCH_LLM_BASE_URL"] = server.base_url
        done = subprocess.run(
            [*revorch, "ingest"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        sent = server.total_requests
    assert done.returncode == 0, done.stderr
    assert "LLM tier: the agents will use gpt-4o-mini" in done.stdout
    summary = done.stdout[done.stdout.index("This run (") :]
    assert (
        "- LLM:      switched off after 5 consecutive failures (server_error: HTTP 503" in summary
    )
    database = tmp_path / ".revorch" / "revorch.duckdb"
    with duckdb.connect(str(database), read_only=True) as conn:
        reasons = dict(
            conn.execute(
                "SELECT fallback_reason, count(*) FROM agents.decisions GROUP BY ALL"
            ).fetchall()
        )
    # Calls in flight when the breaker opened finish their retries; no other call is sent.
    opened_at = 5 + 8  # the threshold, plus the calls already in flight (max_concurrency)
    assert sent <= opened_at * (1 + 3)  # each with its retries (max_retries: 3)
    assert reasons["circuit_open"] > sent  # the rest of the run went offline without a call
