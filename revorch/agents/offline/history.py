"""The past examples each offline model learns from, in time order, and the model fitted on
them: what calibration (a recent holdout) and the backtests (a later test period, a plain
baseline on the same features) split and refit.

``past_examples`` reads the same rows the models' own ``train`` reads (lead: ``lead_examples``;
deal: closed new-business deals at creation; renewal: ended subscriptions at their renewal
window), with their labels and the time that orders them; ``fit_product`` fits the
product's model on any slice of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from revorch.agents.offline.deal_model import CLOSED_DEALS, DEAL_FEATURES, DealModel
from revorch.agents.offline.deal_model import _frame as deal_frame
from revorch.agents.offline.inputs import FEATURE_DAYS, _rows, deal_feature_rows
from revorch.agents.offline.lead_model import INTENT_FEATURES, LeadModel, lead_examples
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel
from revorch.agents.offline.renewal_model import (
    ENDED_SUBSCRIPTIONS_SQL,
    RENEWAL_FEATURES,
    RenewalModel,
)
from revorch.agents.offline.renewal_model import _frame as renewal_frame
from revorch.lifecycle.config import LifecycleConfig, load_lifecycle_config

KINDS = ("lead", "deal", "renewal")
LEAD_HORIZON_DAYS = 90
# What each model predicts, in words, for reports.
OUTCOMES = {
    "lead": f"reaches SQL within {LEAD_HORIZON_DAYS} days (scored at day {FEATURE_DAYS})",
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

    @classmethod
    def ordered(
        cls, kind: str, frame: pl.DataFrame, labels: Any, times: Any, spec: FeatureSpec
    ) -> Examples:
        """Examples sorted by time (ties by their original order, so a split is repeatable)."""
        times = _utc(times)
        order = np.argsort(times, kind="stable")
        return cls(kind, frame[order.tolist()], np.asarray(labels, int)[order], times[order], spec)

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
    kind: str, conn: duckdb.DuckDBPyConnection, *, config: LifecycleConfig | None = None
) -> Examples:
    """Every past example of ``kind`` (lead, deal or renewal) whose label is final."""
    if kind == "lead":
        frame = lead_examples(conn, horizon_days=LEAD_HORIZON_DAYS, feature_days=FEATURE_DAYS)
        return Examples.ordered(
            kind, frame, frame["label"].to_numpy(), frame["created_at"], INTENT_FEATURES
        )
    if kind == "deal":
        rows = deal_feature_rows(conn, CLOSED_DEALS, {"created_before": None})
        return Examples.ordered(
            kind,
            deal_frame(rows),
            [int(r["lost"]) for r in rows],
            [r["created_at"] for r in rows],
            DEAL_FEATURES,
        )
    if kind == "renewal":
        rows = _ended_subscriptions(conn, config or load_lifecycle_config())
        return Examples.ordered(
            kind,
            renewal_frame(rows),
            [int(r["churned"]) for r in rows],
            [r["as_of"] for r in rows],
            RENEWAL_FEATURES,
        )
    raise ValueError(f"unknown model {kind!r}; models are {', '.join(KINDS)}")


def fit_product(kind: str, examples: Examples) -> Any:
    """The product's (uncalibrated) model of ``kind`` fitted on ``examples``; ValueError when
    they are too few to learn from, as the models' own ``train`` says."""
    labels = examples.labels
    if kind == "lead":
        return LeadModel.fit_examples(
            examples.frame, horizon_days=LEAD_HORIZON_DAYS, feature_days=FEATURE_DAYS
        )
    if examples.size < 30 or len(np.unique(labels)) < 2:
        raise ValueError(f"too few {kind} outcomes to learn from ({examples.size})")
    rate = round(float(labels.mean()), 6)
    rate_name, model_class = (
        ("loss_rate", DealModel) if kind == "deal" else ("churn_rate", RenewalModel)
    )
    metadata = {"examples": examples.size, rate_name: rate}
    return model_class(LogisticModel.fit(examples.frame, labels, examples.spec, metadata=metadata))


def _ended_subscriptions(
    conn: duckdb.DuckDBPyConnection, config: LifecycleConfig
) -> list[dict[str, Any]]:
    risk = config.handoffs.renewal_risk
    parameters = {
        "window": config.accounts.renewal_window_days,
        "lookback": risk.lookback_days,
        "angry_priorities": risk.angry_ticket_priorities,
        "angry_csat": risk.angry_csat_at_most,
    }
    return _rows(conn.execute(ENDED_SUBSCRIPTIONS_SQL, parameters))


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
