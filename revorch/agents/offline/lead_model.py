"""The lead scorer: probability that a lead becomes sales-qualified, learnt from history.

Each past contact is one example, described as it stood ``feature_days`` after its creation
(its scoring time): firmographics as the CRM had them then, lead source, job title, stage,
its engagement so far, and the features ``models.lead`` declares (config/agents.yaml). The
label is whether it reached one of the outcome's stages (SQL or later, by default) within
``horizon_days`` of creation (or ever), read from ``stages.stage_transitions``. Contacts
already there at their scoring time are left out: there is nothing left to predict for them.
``labelled_leads`` says how many positives the outcome kept, dropped and called negative.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.offline.inputs import lead_feature_rows
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel, content_version

# The company alone, for the fit score: how much its firmographics raise the odds.
FIT_FEATURES = FeatureSpec(log_numeric=("employees",), categorical=("industry", "tier"))

TRAINING_POINTS = """
    SELECT id AS contact_id, coalesce(created_at, _first_seen_at) AS created_at,
           coalesce(created_at, _first_seen_at) + to_days(CAST($feature_days AS INTEGER)) AS as_of
    FROM contacts
    WHERE coalesce(created_at, _first_seen_at) >= coalesce($created_from::TIMESTAMPTZ,
                                                           '-infinity'::TIMESTAMPTZ)
      AND coalesce(created_at, _first_seen_at) < coalesce($created_before::TIMESTAMPTZ,
                                                          'infinity'::TIMESTAMPTZ)
      -- Only contacts whose whole horizon has been seen (for "ever": their scoring point).
      AND coalesce(created_at, _first_seen_at)
          + to_days(CAST(coalesce($horizon_days, $feature_days) AS INTEGER)) <= data_clock()
    -- At most $max_examples of them, the same ones every time (by a hash of the id).
    ORDER BY hash(id), id
    LIMIT $max_examples
"""
# A model learns as well from a million past contacts as from ten: over that, a fixed sample.
# (The training query over every contact of a 10M store ran out of DuckDB's memory limit.)
MAX_EXAMPLES = 1_000_000

# The label (reached the outcome within the horizon, as known at $labels_as_of), and
# whether the contact reached it only later (a positive the horizon calls negative).
LABELS_SQL = """
WITH reached AS (
    SELECT c.id AS contact_id, coalesce(c.created_at, c._first_seen_at) AS created_at,
           min(t.transitioned_at) AS reached_at
    FROM contacts AS c
    JOIN stages.stage_transitions AS t
      ON t.entity_type = 'contact' AND t.entity_id = c.id AND list_contains($qualified, t.to_stage)
     AND t.transitioned_at <= coalesce($labels_as_of::TIMESTAMPTZ, data_clock())
    WHERE c.id IN (SELECT unnest($ids))
    GROUP BY ALL
)
SELECT contact_id,
       $horizon_days IS NULL
       OR reached_at <= created_at + to_days(CAST($horizon_days AS INTEGER)) AS qualified,
       $horizon_days IS NOT NULL
       AND reached_at > created_at + to_days(CAST($horizon_days AS INTEGER)) AS late
FROM reached
"""


def lead_outcome_words(models: ModelsConfig, horizon_days: int | None, feature_days: int) -> str:
    stages = "/".join(models.lead.outcome.reached)
    within = f"within {horizon_days} days of creation" if horizon_days else "ever"
    return f"reached {stages} {within}, scored {feature_days} days after creation"


def lead_examples(
    conn: duckdb.DuckDBPyConnection,
    *,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
    horizon_days: int | None = None,
    feature_days: int | None = None,
    models: ModelsConfig | None = None,
    labels_as_of: datetime | None = None,
) -> pl.DataFrame:
    """Past contacts created in [created_from, created_before) with complete labels: their
    features at the scoring time and ``label`` (reached the outcome within the horizon), by
    id. Horizon, scoring point and features default to ``models.lead`` (the shipped
    defaults: SQL within 90 days, scored on day 14)."""
    return labelled_leads(
        conn,
        created_from=created_from,
        created_before=created_before,
        horizon_days=horizon_days,
        feature_days=feature_days,
        models=models,
        labels_as_of=labels_as_of,
    )[0]


def labelled_leads(
    conn: duckdb.DuckDBPyConnection,
    *,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
    horizon_days: int | None = None,
    feature_days: int | None = None,
    models: ModelsConfig | None = None,
    labels_as_of: datetime | None = None,
) -> tuple[pl.DataFrame, OutcomeCounts]:
    """:func:`lead_examples`, with what the outcome kept, dropped and called negative.
    Labels are read as known at ``labels_as_of`` (default: the data clock)."""
    models = models or ModelsConfig()
    horizon_days, feature_days = _horizon(models, horizon_days, feature_days)
    parameters = {
        "created_from": created_from,
        "created_before": created_before,
        "horizon_days": horizon_days,
        "max_examples": MAX_EXAMPLES,
    }
    rows = lead_feature_rows(
        conn, TRAINING_POINTS, parameters, feature_days=feature_days, models=models
    )
    kept = [r for r in rows if r["qualified_at"] is None]
    labels = {
        contact: (qualified, late)
        for contact, qualified, late in conn.execute(
            LABELS_SQL,
            {
                "ids": [r["id"] for r in kept],
                "qualified": list(models.lead.outcome.reached),
                "horizon_days": horizon_days,
                "labels_as_of": labels_as_of,
            },
        ).fetchall()
    }
    for row in kept:
        row["label"] = int(labels.get(row["id"], (False, False))[0])
    positives = sum(row["label"] for row in kept)
    counts = OutcomeCounts(
        examples=len(kept),
        positives=positives,
        negatives=len(kept) - positives,
        dropped=len(rows) - len(kept),
        late_positives=sum(1 for q, late in labels.values() if late and not q),
        definition=lead_outcome_words(models, horizon_days, feature_days),
    )
    return _frame(kept, [*_needed_keys(models), "id", "label", "created_at"]), counts


def _horizon(
    models: ModelsConfig, horizon_days: int | None, feature_days: int | None
) -> tuple[int | None, int]:
    """The horizon and scoring point asked for, else the declared ones."""
    outcome = models.lead.outcome
    return (
        horizon_days if horizon_days is not None else outcome.within_days,
        feature_days or models.lead.scoring_days,
    )


def intent_features(models: ModelsConfig) -> FeatureSpec:
    """The lead model's features as declared in ``models.lead``."""
    numeric, log, categorical, grouped, limits = models.lead.spec_parts(
        models.feature_types("lead")
    )
    return FeatureSpec(
        numeric=numeric,
        log_numeric=log,
        categorical=categorical,
        grouped=grouped,
        max_categories=tuple(sorted(limits.items())),
    )


class LeadModel:
    """Probability that an open lead reaches SQL, and how well its company fits.

    Train it on the history in DuckDB with :meth:`train`, score rows from ``lead_inputs``
    with :meth:`predict` (or a polars frame with :meth:`predict_frame`), store it with
    :meth:`to_json`. ``version`` names the exact model: a hash of its content.
    """

    def __init__(
        self,
        intent: LogisticModel,
        fit: LogisticModel,
        *,
        threshold: float,
        fit_quantiles: list[float],
        intent_quantiles: list[float],
        metadata: dict[str, Any],
    ) -> None:
        self.intent = intent
        self.fit = fit
        self.threshold = threshold
        self.fit_quantiles = fit_quantiles
        self.intent_quantiles = intent_quantiles
        self.metadata = metadata
        self.version = content_version("lead-logreg", self._content())

    @classmethod
    def train(
        cls,
        conn: duckdb.DuckDBPyConnection,
        *,
        created_before: datetime | None = None,
        horizon_days: int | None = None,
        feature_days: int | None = None,
        models: ModelsConfig | None = None,
        labels_as_of: datetime | None = None,
    ) -> LeadModel:
        """Fit on contacts created before ``created_before`` (default: all) whose
        horizon has passed on the data clock; features, outcome, horizon and scoring point
        as ``models.lead`` declares them unless given here."""
        models = models or ModelsConfig()
        horizon_days, feature_days = _horizon(models, horizon_days, feature_days)
        examples, counts = labelled_leads(
            conn,
            created_before=created_before,
            horizon_days=horizon_days,
            feature_days=feature_days,
            models=models,
            labels_as_of=labels_as_of,
        )
        return cls.fit_examples(
            examples,
            horizon_days=horizon_days,
            feature_days=feature_days,
            created_before=created_before,
            models=models,
            counts=counts,
        )

    @classmethod
    def fit_examples(
        cls,
        examples: pl.DataFrame,
        *,
        horizon_days: int | None,
        feature_days: int,
        created_before: datetime | None = None,
        models: ModelsConfig | None = None,
        counts: OutcomeCounts | None = None,
    ) -> LeadModel:
        """Fit on rows from :func:`lead_examples` (sorted by id, so the fit is repeatable),
        with the features ``models.lead`` declares; ``counts`` go to the metadata."""
        models = models or ModelsConfig()
        from sklearn.metrics import precision_recall_curve  # a slow import: only when fitting

        examples = examples.sort("id")
        if examples.height < 50:
            raise ValueError(f"too few past contacts to learn from ({examples.height})")
        labels = examples["label"].to_numpy()
        if len(np.unique(labels)) < 2:
            raise ValueError(
                "the outcome leaves one class only" + (f" ({counts.to_text()})" if counts else "")
            )
        intent = LogisticModel.fit(examples, labels, intent_features(models))
        fit = LogisticModel.fit(examples, labels, FIT_FEATURES)
        p = intent.predict_frame(examples)
        precision, recall, cuts = precision_recall_curve(labels, p)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        # The cut with the best F1 separates "work it now" from "not yet".
        threshold = float(cuts[int(np.argmax(f1[:-1]))])
        quantile_points = np.linspace(0, 1, 101)
        metadata = {
            "horizon_days": horizon_days,
            "feature_days": feature_days,
            "created_before": created_before.isoformat() if created_before else None,
            "examples": examples.height,
            "base_rate": round(float(labels.mean()), 6),
            "last_created_at": max(examples["created_at"]).isoformat(),
            # A model trained on another declaration is stale (revorch/agents/models.py).
            "definition": models.lead.key(),
            "stale_after_days": models.lead.stale_after_days,
        }
        if counts is not None:
            metadata["outcome"] = {
                "definition": counts.definition,
                "positives": counts.positives,
                "negatives": counts.negatives,
                "dropped": counts.dropped,
                "late_positives": counts.late_positives,
            }
        return cls(
            intent,
            fit,
            threshold=round(threshold, 6),
            fit_quantiles=_rounded(np.quantile(fit.predict_frame(examples), quantile_points)),
            intent_quantiles=_rounded(np.quantile(p, quantile_points)),
            metadata=metadata,
        )

    def predict(self, inputs: list[dict[str, Any]]) -> list[float]:
        """Probability of reaching SQL within the horizon, for each ``lead_inputs`` row."""
        return self.intent.predict_rows(inputs).tolist()

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """Like :meth:`predict`, for a polars frame with the input keys as columns."""
        return self.intent.predict_frame(frame)

    def fit_scores(self, inputs: list[dict[str, Any]]) -> list[float]:
        """How well each lead's company fits, 0 to 1: the share of past leads whose
        firmographics alone predicted lower odds."""
        p = self.fit.predict_rows(inputs)
        return (np.searchsorted(self.fit_quantiles, p, side="right") / 101).clip(0, 1).tolist()

    def predict_each(
        self, inputs: list[dict[str, Any]], encoded: np.ndarray | None = None
    ) -> list[float]:
        """:meth:`predict` of each row alone (the same numbers), vectorised for many rows
        (``encoded``: the rows as ``self.intent.encode_rows`` gave them)."""
        return self.intent.predict_each(inputs, encoded).tolist()

    def fit_scores_each(self, inputs: list[dict[str, Any]]) -> list[float]:
        """:meth:`fit_scores` of each row alone (the same numbers), vectorised."""
        p = self.fit.predict_each(inputs)
        return (np.searchsorted(self.fit_quantiles, p, side="right") / 101).clip(0, 1).tolist()

    def percentile(self, probability: float) -> float:
        """Share of past leads scored below ``probability``, 0 to 1."""
        return float(np.searchsorted(self.intent_quantiles, probability, side="right") / 101)

    def reasons(
        self,
        item: dict[str, Any],
        limit: int = 4,
        effects: np.ndarray | None = None,
    ) -> list[str]:
        """The features that moved this lead's odds most, in words (``effects``: the item's
        row of ``self.intent.effects``, when computed in bulk)."""
        effects = (
            self.intent.contributions(item)
            if effects is None
            else self.intent.contributions_of(effects)
        )[:limit]
        return [_describe(column, effect, item) for column, effect in effects]

    def _content(self) -> dict[str, Any]:
        return {
            "kind": "lead",
            "intent": self.intent.to_dict(),
            "fit": self.fit.to_dict(),
            "threshold": self.threshold,
            "fit_quantiles": self.fit_quantiles,
            "intent_quantiles": self.intent_quantiles,
            "metadata": self.metadata,
        }

    def to_json(self) -> str:
        """The whole model as JSON (with its version), for ``agents.models``."""
        return json.dumps({"version": self.version, **self._content()}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LeadModel:
        """A model from :meth:`to_json`; refuses a document whose content was altered."""
        data = json.loads(text)
        model = cls(
            LogisticModel.from_dict(data["intent"]),
            LogisticModel.from_dict(data["fit"]),
            threshold=data["threshold"],
            fit_quantiles=data["fit_quantiles"],
            intent_quantiles=data["intent_quantiles"],
            metadata=data["metadata"],
        )
        if data.get("version") not in (None, model.version):
            raise ValueError(f"model content does not match its version {data['version']}")
        return model


def _needed_keys(models: ModelsConfig) -> list[str]:
    intent = intent_features(models)
    return sorted(
        {
            *intent.numeric,
            *intent.log_numeric,
            *intent.categorical,
            *FIT_FEATURES.log_numeric,
            *FIT_FEATURES.categorical,
        }
    )


def _frame(rows: list[dict[str, Any]], keys: list[str]) -> pl.DataFrame:
    """Only the columns a model reads, one list per key: fast for a million rows."""
    return pl.DataFrame({key: [row.get(key) for row in rows] for key in keys}, strict=False)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 8) for v in values]


_COUNT_WORDS = {
    "emails_sent": "emails sent",
    "emails_opened": "emails opened",
    "emails_replied": "email replies",
    "web_visits": "web visits",
    "pricing_visits": "pricing-page visits",
    "form_fills": "form fills",
    "meetings": "meetings",
    "calls": "calls",
}


def _describe(column: str, effect: float, item: dict[str, Any]) -> str:
    direction = "raises" if effect > 0 else "lowers"
    if "=" in column:
        name, value = column.split("=", 1)
        return f"{name.replace('_', ' ')} {value} {direction} the odds"
    value = item.get(column) or 0
    if column in _COUNT_WORDS:
        return f"{value:g} {_COUNT_WORDS[column]} early on {direction} the odds"
    return f"{column.replace('_', ' ')} {value:g} {direction} the odds"
