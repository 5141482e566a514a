"""The past examples each offline model learns from, in time order, and the model fitted on
them: what calibration (a recent holdout) and the backtests (a later test period, a plain
baseline on the same features) split and refit.

``past_examples`` reads the same rows the models' own ``train`` reads, with the features and
outcome config/agents.yaml ``models:`` declares (``labelled_leads``, ``labelled_deals``,
``labelled_renewals``), their labels, the time that orders them and the outcome's counts;
``fit_product`` fits the product's model on any slice of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.offline.deal_model import DealModel, deal_features, labelled_deals
from revorch.agents.offline.deal_model import _counts_metadata as counts_metadata
from revorch.agents.offline.deal_model import _frame as deal_frame
from revorch.agents.offline.lead_model import LeadModel, intent_features, labelled_leads
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel
from revorch.agents.offline.renewal_model import (
    RenewalModel,
    labelled_renewals,
    renewal_features,
)
from revorch.agents.offline.renewal_model import _frame as renewal_frame
from revorch.lifecycle.config import LifecycleConfig

KINDS = ("lead", "deal", "renewal")
# What each model predicts, in words, when no outcome counts say it (an imported sample).
OUTCOMES = {
    "lead": "reaches the declared stages (models.lead.outcome)",
    "deal": "new-business deal is lost (scored at creation)",
    "renewal": "subscription churns at its end (scored at its renewal window)",
}
# The date each example is ordered by, in words.
ORDERED_BY = {"lead": "created", "deal": "created", "renewal": "entered its renewal window"}


@dataclass(frozen=True)
class Examples:
    """Labelled examples of one model, oldest first: ``frame`` (the features, one row per
    example), ``labels`` (0/1), ``times`` (UTC, what orders them) and the features ``spec``
    the product's model reads (the baselines read the same)."""

    kind: str
    frame: pl.DataFrame
    labels: np.ndarray
    times: np.ndarray
    spec: FeatureSpec
    # The declaration the examples were read with, and what its outcome kept and dropped
    # (over the whole history read, not a slice of it).
    models: ModelsConfig = field(default_factory=ModelsConfig)
    counts: OutcomeCounts | None = None

    @classmethod
    def ordered(
        cls,
        kind: str,
        frame: pl.DataFrame,
        labels: Any,
        times: Any,
        spec: FeatureSpec,
        *,
        models: ModelsConfig | None = None,
        counts: OutcomeCounts | None = None,
    ) -> Examples:
        """Examples sorted by time (ties by their original order, so a split is repeatable)."""
        times = _utc(times)
        order = np.argsort(times, kind="stable")
        return cls(
            kind,
            frame[order.tolist()],
            np.asarray(labels, int)[order],
            times[order],
            spec,
            models or ModelsConfig(),
            counts,
        )

    @property
    def size(self) -> int:
        return len(self.labels)

    def where(self, keep: np.ndarray) -> Examples:
        return Examples(
            self.kind,
            self.frame.filter(pl.Series(keep)),
            self.labels[keep],
            self.times[keep],
            self.spec,
            self.models,
            self.counts,
        )

    def split_newest(self, share: float) -> tuple[Examples, Examples]:
        """The oldest ``1 - share`` and the newest ``share`` of the examples."""
        cut = self.size - round(self.size * share)
        index = np.arange(self.size)
        return self.where(index < cut), self.where(index >= cut)

    def before(self, when: datetime | np.datetime64) -> Examples:
        return self.where(self.times < _instant(when))

    def from_(self, when: datetime | np.datetime64) -> Examples:
        return self.where(self.times >= _instant(when))


def past_examples(
    kind: str,
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
) -> Examples:
    """Every past example of ``kind`` (lead, deal or renewal) whose label is final, with the
    features and outcome ``models`` declares (default: the shipped ones)."""
    models = models or ModelsConfig()
    if kind == "lead":
        frame, counts = labelled_leads(conn, models=models)
        return Examples.ordered(
            kind,
            frame,
            frame["label"].to_numpy(),
            frame["created_at"],
            intent_features(models),
            models=models,
            counts=counts,
        )
    if kind == "deal":
        rows, counts = labelled_deals(conn, models=models)
        spec = deal_features(models)
        return Examples.ordered(
            kind,
            deal_frame(rows, spec),
            [int(r["lost"]) for r in rows],
            [r["created_at"] for r in rows],
            spec,
            models=models,
            counts=counts,
        )
    if kind == "renewal":
        rows, counts = labelled_renewals(conn, config=config, models=models)
        spec = renewal_features(models)
        return Examples.ordered(
            kind,
            renewal_frame(rows, spec),
            [int(r["churned"]) for r in rows],
            [r["as_of"] for r in rows],
            spec,
            models=models,
            counts=counts,
        )
    raise ValueError(f"unknown model {kind!r}; models are {', '.join(KINDS)}")


def lead_horizon_days(examples: Examples) -> int:
    """Days after creation a lead's label is final (0 for an outcome with no horizon)."""
    return examples.models.lead.outcome.within_days or 0


def fit_product(kind: str, examples: Examples) -> Any:
    """The product's (uncalibrated) model of ``kind`` fitted on ``examples``, with the
    declaration they were read with; ValueError when they are too few to learn from, as the
    models' own ``train`` says."""
    labels, models = examples.labels, examples.models
    if kind == "lead":
        return LeadModel.fit_examples(
            examples.frame,
            horizon_days=models.lead.outcome.within_days,
            feature_days=models.lead.scoring_days,
            models=models,
            counts=examples.counts,
        )
    if examples.size < 30 or len(np.unique(labels)) < 2:
        raise ValueError(f"too few {kind} outcomes to learn from ({examples.size})")
    rate = round(float(labels.mean()), 6)
    rate_name, model_class = (
        ("loss_rate", DealModel) if kind == "deal" else ("churn_rate", RenewalModel)
    )
    metadata: dict[str, Any] = {
        "examples": examples.size,
        rate_name: rate,
        # A model trained on another declaration is stale (revorch/agents/models.py).
        "definition": models.definition(kind).key(),
    }
    if examples.counts is not None:
        metadata["outcome"] = counts_metadata(examples.counts)
    return model_class(LogisticModel.fit(examples.frame, labels, examples.spec, metadata=metadata))


def _instant(when: datetime | np.datetime64) -> np.datetime64:
    """One time as :func:`_utc` gives them."""
    if isinstance(when, datetime):
        if when.tzinfo is not None:
            when = when.astimezone(UTC).replace(tzinfo=None)
        return np.datetime64(when, "us")
    return np.datetime64(when, "us")


def _utc(values: Any) -> np.ndarray:
    """datetime64 in UTC, without a zone (comparable with each other and with numpy)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        return values.astype("datetime64[us]")
    series = pl.Series("t", list(values) if not isinstance(values, pl.Series) else values)
    if series.dtype == pl.Date:
        series = series.cast(pl.Datetime("us"))
    if isinstance(series.dtype, pl.Datetime) and series.dtype.time_zone:
        series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return series.cast(pl.Datetime("us")).to_numpy()
