"""`dagster dev` loads the project through workspace.yaml and shows its assets and sensors,
over its GraphQL API and in a real browser (headless Chromium). One `dagster dev` serves both."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_definitions import EXPECTED_ASSETS, SCHEDULES

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow

QUERY = """
{
  assetNodes { assetKey { path } }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes {
        sensors { name sensorState { status } }
        schedules { name scheduleState { status } }
      }
    }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dagster_dev")
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "REVORCH_HOME": str(tmp_path / "revorch"),
    }
    (tmp_path / "dagster").mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    process = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the webserver, daemon and code server stop together
    )
    try:
        deadline = time.monotonic() + 300  # a hang guard: it comes up in seconds when idle
        while True:
            try:
                data = _graphql(port, QUERY)
                if data["assetNodes"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("dagster dev did not come up")
            time.sleep(1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_dagster_dev_shows_the_assets_sensors_and_schedules(dagster_dev):
    data = _graphql(dagster_dev, QUERY)
    keys = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
    assert keys == EXPECTED_ASSETS
    sensors = {
        sensor["name"]: sensor["sensorState"]["status"]
        for repo in data["repositoriesOrError"]["nodes"]
        for sensor in repo["sensors"]
    }
    assert sensors == {
        "landing_zone_sensor": "RUNNING",
        "approved_actions_sensor": "RUNNING",
        "decide_automation": "STOPPED",
        "revorch_automation": "RUNNING",
        "abandoned_runs_sensor": "RUNNING",
    }
    schedules = {
        schedule["name"]: schedule["scheduleState"]["status"]
        for repo in data["repositoriesOrError"]["nodes"]
        for schedule in repo["schedules"]
    }
    # Polling HubSpot needs a token, which this test's environment does not have.
    assert schedules == {**dict.fromkeys(SCHEDULES, "RUNNING"), "hubspot_poll_schedule": "STOPPED"}


def rendered(url: str, screenshot: Path | None = None, window: str = "1400,9000") -> str:
    """The page's DOM after its scripts ran, from headless Chromium; with ``screenshot``, a
    PNG of the window too."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            f"--window-size={window}",  # the asset list renders only the rows on screen
            *([f"--screenshot={screenshot}"] if screenshot else []),
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_asset_catalog_lists_the_lifecycle_agent_and_governance_assets(dagster_dev):
    page = rendered(f"http://127.0.0.1:{dagster_dev}/assets?view=flat")
    for name in (
        "contact_lifecycle",
        "sla_escalations",
        "lead_qualification",
        "change_log",
        "approval_queue",
        "dispatched_actions",
        "audit_trail",
    ):
        assert name in page, name
