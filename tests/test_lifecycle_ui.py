"""The lifecycle as the Dagster UI shows it: the lineage reads lead -> MQL -> SQL ->
opportunity -> customer -> onboarding -> adoption -> renewal -> expansion, and a stage asset's
page shows its run metadata (count, conversion in percent, median days in stage) and plots it
run after run.

A small simulated CRM goes through the stages in two runs (half its batches, then the rest),
in this process, on a Dagster instance in the test's folder; the Dagster webserver then serves
that instance. Its GraphQL API gives each stage asset's upstream and materializations; headless
Chromium renders the lineage and a stage page, whose DOM is checked, and Playwright clicks the
stage page's Plots toggle and reads the charts' titles (the screenshots are kept
in the test's folder, for a person to look at).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from test_dagster_dev import CHROMIUM, rendered
from test_definitions import LIFECYCLE_CHAIN
from test_live import latency

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

# The chain, each stage after the one it comes from (the head after the contact machine).
CHAIN = LIFECYCLE_CHAIN[1:]
PREVIOUS = dict(zip(CHAIN, LIFECYCLE_CHAIN[:-1], strict=True))
# Stages whose metadata has no median: expansion's seat signals have no start, so its median is
# over open expansion deals, which a small CRM may not have.
NO_MEDIAN_NEEDED = {"expansion"}

NODES = "{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"
MATERIALIZATIONS = """
query Materializations($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 10) {
        runId
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}
"""


def _materialize_in_two_runs(env: dict[str, str], tmp_path: Path) -> None:
    """The landing zone's batches through the stages: the first half, then the rest, each run
    recorded on the instance at DAGSTER_HOME."""
    from resources import default_resources
    from revorch.definitions import THROUGH_HANDOFFS, materialize

    zone = latency.landing_zone(env)
    held = tmp_path / "held"
    held.mkdir()
    batches = zone.pending()
    assert len(batches) >= 2
    for batch in batches[len(batches) // 2 :]:
        batch.rename(held / batch.name)
    with pytest.MonkeyPatch.context() as environment:
        for name in [n for n in os.environ if n.startswith(("REVORCH_", "DAGSTER_"))]:
            environment.delenv(name)
        for name in ("REVORCH_HOME", "DAGSTER_HOME", "REVORCH_PUBLISHED_DB"):
            environment.setenv(name, env[name])
        with dg.DagsterInstance.get() as instance:
            for _ in range(2):
                result = materialize(
                    THROUGH_HANDOFFS, resources=default_resources(), instance=instance
                )
                assert result.success
                for batch in held.iterdir():
                    batch.rename(zone.incoming_dir / batch.name)


@contextlib.contextmanager
def webserver(env: dict[str, str], log: Path):
    """The Dagster webserver (no daemon: nothing runs by itself) on the project; its port."""
    port = latency.free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster-webserver")),
                *("-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the webserver and its code server stop together
        )
        try:
            deadline = time.monotonic() + 300  # a hang guard: it comes up in seconds when idle
            while True:
                with contextlib.suppress(OSError, RuntimeError, KeyError, TypeError):
                    if latency.graphql(port, NODES, timeout=10)["assetNodes"]:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the webserver did not come up; see {log}")
                time.sleep(1)
            yield port
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _metadata(port: int, name: str) -> list[dict[str, object]]:
    """Each materialization's metadata of ``stages/<name>``, oldest first."""
    data = latency.graphql(port, MATERIALIZATIONS, {"key": {"path": ["stages", name]}})
    found = data["assetOrError"]["assetMaterializations"]
    return [
        {
            entry["label"]: entry.get("intValue", entry.get("floatValue", entry.get("text")))
            for entry in materialization["metadataEntries"]
        }
        for materialization in reversed(found)
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_lineage_reads_like_the_lifecycle_and_a_stage_page_shows_its_metadata(tmp_path):
    env = latency.prepare_home(tmp_path / "revorch")
    from revorch.simulator import SimulationConfig, simulate_history

    simulate_history(
        latency.landing_zone(env), SimulationConfig(contacts=300, seed=6, batch_size=1_000)
    )
    _materialize_in_two_runs(env, tmp_path)

    with webserver(env, tmp_path / "webserver.log") as port:
        nodes = {
            "/".join(node["assetKey"]["path"]): node
            for node in latency.graphql(port, NODES)["assetNodes"]
        }
        metadata = {name: _metadata(port, name) for name in CHAIN}
        # As a person's Skip on the first visit's newsletter dialog, which would cover the page.
        assert latency.graphql(port, "mutation { setNuxSeen }")["setNuxSeen"]
        # The lineage of the chain's last stage, upstream: the whole chain and what feeds it.
        lineage = rendered(
            f"http://127.0.0.1:{port}/assets/stages/expansion"
            "?view=lineage&lineageScope=upstream&lineageDepth=12",
            screenshot=tmp_path / "lineage.png",
            window="2400,1600",
        )
        stage_page = rendered(
            f"http://127.0.0.1:{port}/assets/stages/mqls",
            screenshot=tmp_path / "mqls.png",
            window="1600,2400",
        )
        plots = _plotted(f"http://127.0.0.1:{port}/assets/stages/mqls", tmp_path / "plots.png")

    # The graph: each stage's upstream is the previous stage, not a sibling of it.
    for name in CHAIN:
        upstream = {"/".join(key["path"]) for key in nodes[f"stages/{name}"]["dependencyKeys"]}
        assert f"stages/{PREVIOUS[name]}" in upstream, name
        assert not upstream & {f"stages/{other}" for other in CHAIN if other != PREVIOUS[name]}
    # One group for the lifecycle: the state machines and every stage.
    assert {node["groupName"] for key, node in nodes.items() if key.startswith("stages/")} == {
        "stages"
    }

    # Each stage's metadata, run after run: how many, who came and went, conversion, time.
    for name in CHAIN:
        first, second = metadata[name]
        for run in (first, second):
            for label in ("count", "entered_this_run", "left_this_run"):
                assert isinstance(run[label], int), (name, label)
            assert run["next_stage"], name
        assert (first["entered_this_run"], first["left_this_run"]) == (first["count"], 0), name
        assert second["count"] == (
            first["count"] + second["entered_this_run"] - second["left_this_run"]
        ), name
        conversion = second.get("conversion_to_next_pct")
        if conversion is not None:
            assert 0 <= conversion <= 100 and conversion == round(conversion, 1), name
        if name not in NO_MEDIAN_NEEDED and second["count"]:
            assert second["median_days_in_stage"] >= 0, name
    # The contact funnel converts at every step of a CRM this size.
    for name in ("leads", "mqls", "sqls", "opportunities"):
        assert 0 < metadata[name][-1]["conversion_to_next_pct"] < 100, name
    assert metadata["mqls"][-1]["entered_this_run"] > 0

    # The pages rendered: the lineage draws a node for each stage; the stage page its numbers.
    for name in ["contact_lifecycle", *CHAIN]:
        assert f">{name}<" in lineage, name
    mqls = metadata["mqls"][-1]
    for label in ("count", "conversion_to_next_pct", "median_days_in_stage", "entered_this_run"):
        assert label in stage_page, label
    assert f"{mqls['conversion_to_next_pct']}" in stage_page
    assert "Plots" in stage_page  # the metadata's toggle to plot them run after run
    assert (tmp_path / "lineage.png").stat().st_size > 0
    assert (tmp_path / "mqls.png").stat().st_size > 0

    # The metadata's plots, run after run (two materializations, so two points): one chart
    # per number a RevOps person follows.
    assert set(PLOTTED) <= set(plots["titles"]), plots
    assert (tmp_path / "plots.png").stat().st_size > 0


# The numbers a RevOps person follows on a stage page, plotted by the Dagster UI.
PLOTTED = (
    "count",
    "entered_this_run",
    "left_this_run",
    "conversion_to_next_pct",
    "median_days_in_stage",
)


def _plotted(url: str, screenshot: Path) -> dict[str, object]:
    """Open a stage page in Chromium (driven by Playwright: the Plots toggle needs a click),
    switch the metadata to its plots and save a screenshot; the title of each chart drawn."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(url, timeout=120_000)
            toggle = page.get_by_role("button", name="Plots")
            toggle.first.wait_for(timeout=120_000)
            toggle.first.click()
            page.locator("canvas").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1_000)  # the charts' entry animation
            page.screenshot(path=str(screenshot), full_page=True)
            # Each chart is a canvas under a heading with its metadata key (the table view
            # has none): the nearest heading above each canvas.
            titles = page.eval_on_selector_all(
                "canvas",
                """canvases => canvases.map(canvas => {
                    for (let box = canvas.parentElement; box; box = box.parentElement) {
                        const title = box.querySelector('span');
                        if (title) return title.innerText;
                    }
                    return null;
                })""",
            )
            return {"titles": titles, "charts": len(titles)}
        finally:
            browser.close()
