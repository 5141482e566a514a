"""The Dagster UI, opened in a real browser (headless Chromium), shows Revorch's assets."""

import shutil
import subprocess

import pytest

from test_dagster_dev import dagster_dev  # noqa: F401  (the fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)"
)


def rendered(url: str) -> str:
    """The page's DOM after its scripts ran, from headless Chromium."""
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
            "--window-size=1400,9000",  # the asset list renders only the rows on screen
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_asset_catalog_lists_the_lifecycle_agent_and_governance_assets(dagster_dev):  # noqa: F811
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
