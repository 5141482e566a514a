"""Where Revorch keeps its files, from the environment, with local defaults.

``REVORCH_HOME`` (default ``./.revorch``) holds the DuckDB file, the landing zone and the
Dagster instance; ``REVORCH_DB`` and ``REVORCH_LANDING`` override the first two.
``REVORCH_STATE_BACKEND=ducklake`` keeps the state on DuckLake instead of the file
(``REVORCH_DUCKLAKE_CATALOG``, ``REVORCH_DUCKLAKE_DATA``; docs/deployment.md).
``REVORCH_DUCKDB_MEMORY_LIMIT`` caps DuckDB's memory in a run (default: a quarter of the
machine's memory); past it, DuckDB spills to ``revorch.duckdb.tmp`` beside the state store.
"""

from __future__ import annotations

import os
from pathlib import Path

# The config modules are imported inside the functions that need their DEFAULT_PATH: they
# load polars, numpy and pydantic, which `revorch --help` and the import of settings should not.


# Variables that point a run away from its REVORCH_HOME (another file, another backend) or at
# a network service. A build that must stay in its own folder clears them (tests/conftest.py,
# tests/test_scaling.py, bench/uplift_recovery.py).
ELSEWHERE = (
    "REVORCH_DB",
    "REVORCH_LANDING",
    "REVORCH_PUBLISHED_DB",
    "REVORCH_AUDIT_ANCHOR",
    "REVORCH_OUTBOX",
    "REVORCH_DISPATCH_JOURNAL",
    "REVORCH_STATE_BACKEND",
    "REVORCH_LLM_BASE_URL",
    "OPENAI_API_KEY",
    "REVORCH_WEBHOOK_URL",
    "REVORCH_WEBHOOK_SECRET",
)


def revorch_home() -> Path:
    return Path(os.environ.get("REVORCH_HOME", ".revorch")).resolve()


def database_path() -> Path:
    return Path(os.environ.get("REVORCH_DB", revorch_home() / "revorch.duckdb")).resolve()


def state_backend() -> str:
    """``duckdb`` (the embedded file, the default) or ``ducklake`` (a PostgreSQL catalog)."""
    value = os.environ.get("REVORCH_STATE_BACKEND", "").strip() or "duckdb"
    from revorch.state.backend import BACKENDS  # imports duckdb; only when asked

    if value not in BACKENDS:
        raise ValueError(f"REVORCH_STATE_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    if value == "ducklake" and not ducklake_catalog_dsn():
        raise ValueError(
            "REVORCH_STATE_BACKEND=ducklake needs REVORCH_DUCKLAKE_CATALOG, the PostgreSQL "
            "catalog as a libpq string (host=... port=... dbname=... user=...)"
        )
    return value


def duckdb_memory_limit() -> str:
    """DuckDB's ``memory_limit`` for a run: ``REVORCH_DUCKDB_MEMORY_LIMIT`` (``4GB``, ``500MB``)
    or a quarter of the machine's memory, at least 1 GiB. DuckDB's default (80%) would let its
    buffer pool and the run's Python objects (a row per open lead in an agent step) together
    outgrow the machine at a million contacts."""
    value = os.environ.get("REVORCH_DUCKDB_MEMORY_LIMIT", "").strip()
    if value:
        return value
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(total // 4, 2**30) // 2**20}MiB"


def ducklake_catalog_dsn() -> str | None:
    return os.environ.get("REVORCH_DUCKLAKE_CATALOG") or None


def ducklake_data_path() -> str:
    """Where DuckLake writes its Parquet files: a folder every writer reaches (or s3://...)."""
    return os.environ.get("REVORCH_DUCKLAKE_DATA") or str(revorch_home() / "lake")


def landing_path() -> Path:
    return Path(os.environ.get("REVORCH_LANDING", revorch_home() / "landing")).resolve()


def dagster_home() -> Path:
    return Path(os.environ.get("DAGSTER_HOME", revorch_home() / "dagster")).resolve()


def published_path() -> Path:
    """The read-only copy of the state store that analysts open (refreshed after each run)."""
    return Path(
        os.environ.get("REVORCH_PUBLISHED_DB", revorch_home() / "published" / "revorch.duckdb")
    ).resolve()


def lifecycle_config_path() -> Path:
    from revorch.lifecycle import config as lifecycle_config

    return Path(os.environ.get("REVORCH_LIFECYCLE_CONFIG", lifecycle_config.DEFAULT_PATH)).resolve()


def agents_config_path() -> Path:
    from revorch.agents import config as agents_config

    return Path(os.environ.get("REVORCH_AGENTS_CONFIG", agents_config.DEFAULT_PATH)).resolve()


def policy_path() -> Path:
    from revorch.governance import policy

    return Path(os.environ.get("REVORCH_POLICY", policy.DEFAULT_PATH)).resolve()


def audit_anchor_path() -> Path:
    """Where the audit trail's head is appended after every commit, outside the database;
    by default named after the database, so each state store has its own anchors."""
    database = database_path()
    default = database.parent / "audit" / f"{database.stem}.anchors.jsonl"
    return Path(os.environ.get("REVORCH_AUDIT_ANCHOR", default)).resolve()


def outbox_path() -> Path:
    """The dispatcher's default target: one JSON line per action sent."""
    return Path(
        os.environ.get("REVORCH_OUTBOX", revorch_home() / "outbox" / "actions.jsonl")
    ).resolve()


def dispatch_journal_path() -> Path:
    """The dispatcher's journal of delivery attempts (SQLite), next to the outbox; named after
    the database, since what it holds is folded into that state store."""
    database = database_path()
    default = revorch_home() / "outbox" / f"{database.stem}.dispatch-journal.sqlite3"
    return Path(os.environ.get("REVORCH_DISPATCH_JOURNAL", default)).resolve()


def inbox_url() -> str:
    """Where reviewers open the approvals inbox (served by `revorch serve` under /approvals);
    set REVORCH_INBOX_URL when it is reached through a proxy or on another port."""
    return os.environ.get("REVORCH_INBOX_URL", "http://127.0.0.1:8000/approvals")


def hubspot_client_secret() -> str | None:
    """The HubSpot app's client secret, which signs its webhooks (X-HubSpot-Signature-v3)."""
    return os.environ.get("REVORCH_HUBSPOT_CLIENT_SECRET") or None


SOURCE_SECRET_PREFIX = "REVORCH_SOURCE_SECRET_"


def webhook_source_secrets() -> dict[str, str]:
    """Standard Webhooks secrets by source: ``REVORCH_SOURCE_SECRET_BILLING=whsec_...``
    signs ``POST /webhooks/billing``."""
    return {
        name.removeprefix(SOURCE_SECRET_PREFIX).lower(): value
        for name, value in os.environ.items()
        if name.startswith(SOURCE_SECRET_PREFIX) and value
    }


def webhook_public_url() -> str | None:
    """The base URL webhook senders post to (``https://revorch.example.com``), if the
    receiver runs behind a proxy that changes host or scheme."""
    return os.environ.get("REVORCH_PUBLIC_URL") or None


def webhook_max_body_bytes(default: int) -> int:
    return int(os.environ.get("REVORCH_WEBHOOK_MAX_BODY_BYTES", default))
