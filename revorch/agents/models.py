"""The offline tier's trained models, kept in ``agents.models`` by content version, and the
attempts the history was too short for, in ``agents.model_attempts``."""

from __future__ import annotations

from datetime import date
from typing import Any

import duckdb

from revorch import clock
from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.offline import DealModel, LeadModel, OfflineTier, RenewalModel
from revorch.agents.offline.calibration import load_model
from revorch.agents.offline.tier import MODEL_AGENTS, train_model
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
    """Train every model the history supports and keep the ones not stored yet (the daily
    retrain); ``config``: the lifecycle config (the run's snapshot; default: the shipped
    file); ``models``: the declared features and outcomes (config/agents.yaml ``models:``);
    ``scoring``: the calibration and cuts (config/agents.yaml ``scoring:``; None:
    uncalibrated). A kind the history is too short for is recorded as tried today."""
    models = models or ModelsConfig()
    tier = OfflineTier(config=config)
    config, today = tier.config, clock.now(conn).date()
    for kind in KINDS:
        _train_and_keep(conn, tier, kind, today, config=config, models=models, scoring=scoring)
    return tier


def stored_tier(
    conn: duckdb.DuckDBPyConnection, *, config: LifecycleConfig | None = None
) -> OfflineTier:
    """The newest stored model of each kind, as stored: never trains, never writes. What a
    replay of a recorded run uses (it reads the analysts' read-only copy)."""
    stored = stored_models(conn)
    return OfflineTier(stored.get("lead"), stored.get("deal"), stored.get("renewal"), config=config)


def offline_tier(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> OfflineTier:
    """The newest stored models; a kind that is missing, or was trained on other declared
    features or outcomes than ``models``, is trained first, that kind alone. A kind the
    history is too short for is tried once per clock day and declaration: later runs that
    day leave its agent to its rules (``untrained`` says why) without training again, and
    the daily ``agents/offline_models`` retrain tries it next."""
    models = models or ModelsConfig()
    stored = stored_models(conn)
    tier = OfflineTier(config=config)
    config, today = tier.config, None  # the clock is read only when a kind needs training
    for kind in KINDS:
        model = stored.get(kind)
        if model is not None and _definition(model, kind) == models.definition(kind).key():
            tier.set_model(kind, model)
            continue
        if today is None:
            now = clock.now(conn)
            if now is None:
                # The data clock on an empty history: nothing to train on, nothing to record.
                tier.untrained[MODEL_AGENTS[kind]] = "no history yet"
                continue
            today = now.date()
        failed = conn.execute(
            "SELECT error FROM agents.model_attempts "
            "WHERE kind = ? AND definition = ? AND tried_on = ?",
            [kind, models.definition(kind).key(), today],
        ).fetchone()
        if failed:
            tier.untrained[MODEL_AGENTS[kind]] = failed[0]
            continue
        _train_and_keep(conn, tier, kind, today, config=config, models=models, scoring=scoring)
    return tier


def stored_models(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The newest stored model of each kind."""
    rows = conn.execute(
        "SELECT kind, arg_max(model, trained_at) FROM agents.models GROUP BY kind"
    ).fetchall()
    return {kind: load_model(KINDS, kind, text) for kind, text in rows if kind in KINDS}


def _definition(model: Any, kind: str) -> str:
    # A model stored before declarations existed was trained on the shipped ones.
    return model.metadata.get("definition", ModelsConfig().definition(kind).key())


def _train_and_keep(
    conn: duckdb.DuckDBPyConnection,
    tier: OfflineTier,
    kind: str,
    today: date,
    *,
    config: LifecycleConfig | None,
    models: ModelsConfig,
    scoring: ScoringConfig | None,
) -> None:
    """Train ``kind`` into ``tier`` and store it, or record why the history could not."""
    definition = models.definition(kind).key()
    try:
        model = train_model(kind, conn, config=config, models=models, scoring=scoring)
    except ValueError as error:  # too little history: the rule decides instead
        tier.untrained[MODEL_AGENTS[kind]] = str(error)
        conn.execute(
            "DELETE FROM agents.model_attempts WHERE kind = ? AND definition = ?",
            [kind, definition],
        )
        conn.execute(
            "INSERT INTO agents.model_attempts VALUES (?, ?, ?, now(), ?)",
            [kind, definition, today, str(error)],
        )
        return
    tier.set_model(kind, model)
    exists = conn.execute(
        "SELECT count(*) FROM agents.models WHERE version = ?", [model.version]
    ).fetchone()[0]
    if not exists:
        conn.execute(
            "INSERT INTO agents.models VALUES (?, ?, now(), ?)",
            [model.version, kind, model.to_json()],
        )


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
