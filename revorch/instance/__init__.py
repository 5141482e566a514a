"""The project's own Dagster instance: DAGSTER_HOME with Revorch's dagster.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from revorch import settings

INSTANCE_CONFIG = Path(__file__).parent / "dagster.yaml"
# Dagster's runs, events and schedules in PostgreSQL instead of SQLite files under
# DAGSTER_HOME, so a webserver, a daemon and run workers on several machines share them.
POSTGRES_URL_VARIABLE = "REVORCH_DAGSTER_POSTGRES_URL"


def postgres_storage(url: str | dict) -> dict:
    """The instance's ``storage`` section for dagster-postgres (``postgresql://...``, or
    ``{"env": "VARIABLE"}`` to read it when the instance loads)."""
    return {"storage": {"postgres": {"postgres_url": url}}}


def instance_config() -> str:
    """Revorch's dagster.yaml, with PostgreSQL storage when REVORCH_DAGSTER_POSTGRES_URL is set
    (in place of the SQLite event log: Dagster would take a storage named per part first)."""
    text = INSTANCE_CONFIG.read_text()
    if not os.environ.get(POSTGRES_URL_VARIABLE):
        return text
    config = yaml.safe_load(text)
    del config["event_log_storage"]
    config.update(postgres_storage({"env": POSTGRES_URL_VARIABLE}))
    header = "# Revorch's dagster.yaml (revorch/instance/dagster.yaml) on PostgreSQL\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def ensure_dagster_home() -> Path:
    """Create DAGSTER_HOME with Revorch's dagster.yaml and point the environment at it."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    wanted = instance_config()
    if not target.exists() or target.read_text() != wanted:
        target.write_text(wanted)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
