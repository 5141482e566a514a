"""How good is the lead scorer? Train on the past, score the contacts that came after.

``backtest_lead_scorer`` splits the contacts by creation date. The model is trained only on
contacts created at least ``horizon_days`` before the split, so every training label was
already known on the split date, and it is tested on the contacts created after the split
whose horizon has passed (their labels are final). Each contact is scored as it stood at its
scoring time, exactly as it would have been in production.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import numpy as np

from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.models import outcome_counts
from revorch.agents.offline.lead_model import LeadModel, _horizon, labelled_leads

TEST_SHARE = 0.3

# The date that leaves the last TEST_SHARE of the contacts with a final label after it.
DEFAULT_SPLIT_SQL = """
SELECT quantile_disc(coalesce(created_at, _first_seen_at), 1 - $test_share)
FROM contacts
WHERE coalesce(created_at, _first_seen_at) + to_days(CAST($horizon_days AS INTEGER))
      <= data_clock()
"""


@dataclass(frozen=True)
class CalibrationBin:
    """Contacts whose predicted probability fell in [low, high)."""

    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed_rate: float | None


@dataclass(frozen=True)
class BacktestReport:
    """The lead scorer's figures on contacts it never saw while training."""

    model_version: str
    split: datetime
    train_created_before: datetime
    horizon_days: int | None  # None: "ever", as known at the split (train) and now (test)
    feature_days: int
    n_train: int
    n_test: int
    base_rate_train: float
    base_rate_test: float
    auc: float
    precision_at_top_decile: float
    lift_at_top_decile: float
    brier: float
    brier_base_rate: float  # a model that always says the training base rate
    calibration: list[CalibrationBin] = field(default_factory=list)
    outcome_train: OutcomeCounts | None = None
    outcome_test: OutcomeCounts | None = None

    @property
    def warnings(self) -> list[str]:
        """Why the figures may not be trusted (too few positives), for the CLI and metadata."""
        return [
            f"{part}: {counts.warning}"
            for part, counts in (("train", self.outcome_train), ("test", self.outcome_test))
            if counts is not None and counts.warning
        ]

    def to_text(self) -> str:
        """A readable report, for the terminal."""
        label = (
            self.outcome_train.definition
            if self.outcome_train
            else f"reached SQL within {self.horizon_days} days of creation; "
            f"scored {self.feature_days} days after creation"
        )
        lines = [
            f"Lead scorer backtest ({self.model_version})",
            f"  split {self.split:%Y-%m-%d}: trained on contacts created before "
            f"{self.train_created_before:%Y-%m-%d}, tested on those created from the split on",
            f"  label: {label}",
            *(
                f"  {part} outcome: {counts.to_text()}"
                for part, counts in (("train", self.outcome_train), ("test", self.outcome_test))
                if counts is not None
            ),
            f"  train {self.n_train:,} contacts (base rate {self.base_rate_train:.1%}), "
            f"test {self.n_test:,} (base rate {self.base_rate_test:.1%})",
            f"  ROC AUC                  {self.auc:.3f}",
            f"  precision at top decile  {self.precision_at_top_decile:.1%} "
            f"(lift {self.lift_at_top_decile:.1f}x)",
            f"  Brier score              {self.brier:.4f} "
            f"(base-rate guess {self.brier_base_rate:.4f})",
            "",
            "  calibration    count  predicted  observed",
        ]
        for b in self.calibration:
            predicted = "-" if b.mean_predicted is None else f"{b.mean_predicted:.1%}"
            observed = "-" if b.observed_rate is None else f"{b.observed_rate:.1%}"
            lines.append(
                f"  {b.low:.1f}-{b.high:.1f}  {b.count:>10,}  {predicted:>9}  {observed:>8}"
            )
        lines += [f"  WARNING {w}" for w in self.warnings]
        return "\n".join(lines)


# What a backtest does, in order, for a progress display.
PHASES = ("choosing the split", "training", "building the test set", "scoring the test set")


def backtest_lead_scorer(
    conn: duckdb.DuckDBPyConnection,
    *,
    split: str | None = None,
    horizon_days: int | None = None,
    feature_days: int | None = None,
    progress: Callable[[str], None] = lambda phase: None,
    models: ModelsConfig | None = None,
) -> BacktestReport:
    """Train before ``split`` (ISO date; default: leaves the last 30% of contacts with final
    labels for testing), test after it, and report discrimination and calibration, with the
    features and outcome ``models.lead`` declares (horizon and scoring point unless given)
    and how many positives the outcome kept, dropped and called negative on each side.
    ``progress`` is told each of :data:`PHASES` as it starts."""
    progress(PHASES[0])
    from sklearn.metrics import brier_score_loss, roc_auc_score  # a slow import: only here

    models = models or ModelsConfig()
    horizon_days, feature_days = _horizon(models, horizon_days, feature_days)
    # "Ever" has no horizon: train on contacts scored by the split, labels as known then.
    gap = horizon_days if horizon_days is not None else feature_days
    if split is None:
        split_at = conn.execute(
            DEFAULT_SPLIT_SQL, {"test_share": TEST_SHARE, "horizon_days": gap}
        ).fetchone()[0]
        if split_at is None:
            raise ValueError(f"no contact is older than the {horizon_days}-day horizon yet")
    else:
        cast = conn.execute("SELECT CAST($split AS TIMESTAMPTZ)", {"split": split})
        split_at = cast.fetchone()[0]
    train_before = split_at - timedelta(days=gap)
    progress(PHASES[1])
    model = LeadModel.train(
        conn,
        created_before=train_before,
        horizon_days=horizon_days,
        feature_days=feature_days,
        models=models,
        labels_as_of=split_at if horizon_days is None else None,
    )
    progress(PHASES[2])
    test, test_counts = labelled_leads(
        conn,
        created_from=split_at,
        horizon_days=horizon_days,
        feature_days=feature_days,
        models=models,
    )
    labels = test["label"].to_numpy()
    if test.height == 0 or len(np.unique(labels)) < 2:
        raise ValueError("the test period needs contacts with both outcomes")
    progress(PHASES[3])
    predicted = model.predict_frame(test)
    top = np.argsort(-predicted, kind="stable")[: max(1, len(predicted) // 10)]
    base_train = model.metadata["base_rate"]
    return BacktestReport(
        model_version=model.version,
        split=split_at,
        train_created_before=train_before,
        horizon_days=horizon_days,
        feature_days=feature_days,
        n_train=model.metadata["examples"],
        n_test=test.height,
        base_rate_train=base_train,
        base_rate_test=float(labels.mean()),
        auc=float(roc_auc_score(labels, predicted)),
        precision_at_top_decile=float(labels[top].mean()),
        lift_at_top_decile=float(labels[top].mean() / labels.mean()),
        brier=float(brier_score_loss(labels, predicted)),
        brier_base_rate=float(brier_score_loss(labels, np.full(len(labels), base_train))),
        calibration=calibration_table(predicted, labels),
        outcome_train=outcome_counts(model),
        outcome_test=test_counts,
    )


def calibration_table(predicted: np.ndarray, labels: np.ndarray, bins: int = 10) -> list:
    """Ten equal-width bins of predicted probability: count, mean prediction, observed rate."""
    index = np.minimum((predicted * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        table.append(
            CalibrationBin(
                low=b / bins,
                high=(b + 1) / bins,
                count=count,
                mean_predicted=float(predicted[inside].mean()) if count else None,
                observed_rate=float(labels[inside].mean()) if count else None,
            )
        )
    return table
