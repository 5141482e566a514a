"""The offline tier's trained models, kept in ``agents.models`` by content version."""

from __future__ import annotations

import duckdb

from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.offline import DealModel, LeadModel, OfflineTier, RenewalModel
from revorch.agents.offline.calibration import load_model
from revorch.agents.scoring import ScoringConfig
from revorch.lifecycle.config import LifecycleConfig

KINDS = {"lead": LeadModel, "deal": DealModel, "renewal": RenewalModel}


def train_and_store(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> OfflineTier:
    """Train every model the history supports and keep the ones not stored yet; ``config``:
    the lifecycle config (the run's snapshot; default: the shipped file); ``models``: the
    declared features and outcomes (config/agents.yaml ``models:``); ``scoring``: the
    calibration and cuts (config/agents.yaml ``scoring:``; None: uncalibrated)."""
    tier = OfflineTier.train(conn, config=config, models=models, scoring=scoring)
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
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> OfflineTier:
    """The newest stored models; trained from the history first if a kind is missing, or
    was trained on other declared features or outcomes than ``models`` (a history too short
    for a model leaves that agent to its rules until it grows)."""
    models = models or ModelsConfig()
    rows = conn.execute(
        """
        SELECT kind, arg_max(model, trained_at) FROM agents.models GROUP BY kind
        """
    ).fetchall()
    stored = {kind: load_model(KINDS, kind, text) for kind, text in rows if kind in KINDS}
    shipped = ModelsConfig()
    current = all(
        kind in stored
        # A model stored before declarations existed was trained on the shipped ones.
        and stored[kind].metadata.get("definition", shipped.definition(kind).key())
        == models.definition(kind).key()
        for kind in KINDS
    )
    if not current:
        if _read_only(conn):
            # A replay reads a copy it may not write: train in memory and store nothing.
            return OfflineTier.train(conn, config=config, models=models, scoring=scoring)
        return train_and_store(conn, config=config, models=models, scoring=scoring)
    return OfflineTier(stored.get("lead"), stored.get("deal"), stored.get("renewal"), config=config)


def _read_only(conn: duckdb.DuckDBPyConnection) -> bool:
    row = conn.execute(
        "SELECT readonly FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return bool(row and row[0])


def outcome_counts(model: LeadModel | DealModel | RenewalModel | None) -> OutcomeCounts | None:
    """What the model's outcome definition kept, dropped and called negative when it was
    trained (None for no model, or one trained before outcomes were counted)."""
    outcome = model.metadata.get("outcome") if model is not None else None
    if not outcome:
        return None
    positives, negatives = outcome["positives"], outcome["negatives"]
    return OutcomeCounts(
        examples=positives + negatives,
        positives=positives,
        negatives=negatives,
        dropped=outcome["dropped"],
        late_positives=outcome["late_positives"],
        definition=outcome["definition"],
    )
