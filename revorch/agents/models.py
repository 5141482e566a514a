"""The offline tier's trained models, kept in ``agents.models`` by content version."""

from __future__ import annotations

import duckdb

from revorch.agents.offline import DealModel, LeadModel, OfflineTier, RenewalModel
from revorch.agents.offline.calibration import load_model
from revorch.agents.scoring import ScoringConfig
from revorch.lifecycle.config import LifecycleConfig

KINDS = {"lead": LeadModel, "deal": DealModel, "renewal": RenewalModel}


def train_and_store(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> OfflineTier:
    """Train every model the history supports and keep the ones not stored yet; ``config``:
    the lifecycle config (the run's snapshot; default: the shipped file); ``scoring``: the
    calibration and cuts (config/agents.yaml ``scoring:``; None: uncalibrated)."""
    tier = OfflineTier.train(conn, config=config, scoring=scoring)
    for kind, model in (
        ("lead", tier.lead_model),
        ("deal", tier.deal_model),
        ("renewal", tier.renewal_model),
    ):
        if model is None:
            continue
        exists = conn.execute(
            "SELECT count(*) FROM agents.models WHERE version = ?", [model.version]
        ).fetchone()[0]
        if not exists:
            conn.execute(
                "INSERT INTO agents.models VALUES (?, ?, now(), ?)",
                [model.version, kind, model.to_json()],
            )
    return tier


def offline_tier(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> OfflineTier:
    """The newest stored models; trained from the history first if a kind is missing (a
    history too short for a model leaves that agent to its rules until it grows)."""
    rows = conn.execute(
        """
        SELECT kind, arg_max(model, trained_at) FROM agents.models GROUP BY kind
        """
    ).fetchall()
    if {kind for kind, _ in rows} != set(KINDS):
        return train_and_store(conn, config=config, scoring=scoring)
    stored = {kind: load_model(KINDS, kind, text) for kind, text in rows if kind in KINDS}
    return OfflineTier(stored.get("lead"), stored.get("deal"), stored.get("renewal"), config=config)
