"""The project's own Dagster instance: DAGSTER_HOME with Revorch's dagster.yaml."""

from __future__ import annotations

import os
from pathlib import Path

from revorch import settings

INSTANCE_CONFIG = Path(__file__).parent / "dagster.yaml"


def ensure_dagster_home() -> Path:
    """Create DAGSTER_HOME with Revorch's dagster.yaml and point the environment at it."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists() or target.read_text() != INSTANCE_CONFIG.read_text():
        target.write_text(INSTANCE_CONFIG.read_text())
    os.environ["DAGSTER_HOME"] = str(home)
    return home
