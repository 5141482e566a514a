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


def instance_config(home: Path) -> str:
    """Revorch's dagster.yaml for the instance at ``home``: with Dagster's PostgreSQL storage
    when REVORCH_DAGSTER_POSTGRES_URL is set, else with Dagster's SQLite event log in its own
    place (``home/history/runs``) whose pool slot claim two processes cannot both win
    (revorch/instance/storage.py: on SQLite Dagster's own claim let two runs' steps take the
    one duckdb_writer slot at once). The directory is written out, not left to DAGSTER_HOME,
    so that an instance opened from the folder alone finds it too."""
    text = INSTANCE_CONFIG.read_text()
    if os.environ.get(POSTGRES_URL_VARIABLE):
        return text + "\n" + yaml.safe_dump(postgres_storage({"env": POSTGRES_URL_VARIABLE}))
    event_log = {
        "event_log_storage": {
            "module": "revorch.instance.storage",
            "class": "AtomicClaimSqliteEventLogStorage",
            "config": {"base_dir": str(Path(home).resolve() / "history" / "runs")},
        }
    }
    return text + "\n" + yaml.safe_dump(event_log, sort_keys=False)


def ensure_dagster_home() -> Path:
    """Create DAGSTER_HOME with Revorch's dagster.yaml and point the environment at it."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    wanted = instance_config(home)
    if not target.exists() or target.read_text() != wanted:
        target.write_text(wanted)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
