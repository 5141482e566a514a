"""A backtest for every offline model, against plain scikit-learn baselines.

For each model (lead, deal, renewal) the past examples are split by time: the product's
model is trained on the earlier period (calibrated on that period's newest share, as in
production) and tested on the later one; on the very same split and features, a plain
logistic regression and a gradient-boosting classifier are fitted and tested too. The
examples carry the features and outcome config/agents.yaml ``models:`` declares. The report
gives the outcome's counts (with a warning under about 100 positives) and, side by side,
ROC AUC, precision at the top decile and its lift, the Brier score and the mean prediction
against the observed rate, with the product's reliability table, and says so loudly when
the product is worse than a baseline (``worse_than_baseline``).

Leads are trained only on contacts created a horizon (the declared ``within_days``, 90 by
default) before the split, so every training label was known on the split date. Deals and
renewals are split on their creation and renewal-window dates; a training deal may have
closed after the split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import polars as pl

from revorch.agents.features import MIN_POSITIVES, ModelsConfig, OutcomeCounts
from revorch.agents.offline.calibration import calibrate_on_holdout, model_probabilities
from revorch.agents.offline.history import (
    KINDS,
    ORDERED_BY,
    OUTCOMES,
    Examples,
    fit_product,
    lead_horizon_days,
    past_examples,
)
from revorch.agents.scoring import ScoringConfig
from revorch.lifecycle.config import LifecycleConfig

TEST_SHARE = 0.3
PRODUCT = "product"
UNCALIBRATED = "product, uncalibrated"
BASELINES = ("logistic regression", "gradient boosting")
# What backtesting one model does, in order, for a progress display.
PHASES = ("reading its examples", "training and testing it and its baselines")


@dataclass(frozen=True)
class CalibrationBin:
    """Test examples whose predicted probability fell in [low, high)."""

    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed_rate: float | None


@dataclass(frozen=True)
class Scores:
    """One scorer's figures on the test period."""

    name: str
    auc: float
    precision_at_top_decile: float
    lift_at_top_decile: float
    brier: float
    mean_predicted: float

    @classmethod
    def of(cls, name: str, labels: np.ndarray, predicted: np.ndarray) -> Scores:
        from sklearn.metrics import brier_score_loss, roc_auc_score

        top = np.argsort(-predicted, kind="stable")[: max(1, len(predicted) // 10)]
        return cls(
            name=name,
            auc=float(roc_auc_score(labels, predicted)),
            precision_at_top_decile=float(labels[top].mean()),
            lift_at_top_decile=float(labels[top].mean() / labels.mean()),
            brier=float(brier_score_loss(labels, predicted)),
            mean_predicted=float(predicted.mean()),
        )


@dataclass(frozen=True)
class ModelBacktest:
    """A model's backtest: its figures and its baselines' on the same test period."""

    kind: str
    outcome: str
    split: datetime
    n_train: int
    n_test: int
    base_rate_train: float
    base_rate_test: float
    scores: list[Scores]  # the product, the product uncalibrated, then the baselines
    calibration: list[CalibrationBin] = field(default_factory=list)
    calibrated: bool = True
    tolerance_auc: float = 0.01
    tolerance_brier: float = 0.002
    ordered_by: str = ""  # what the split is on, in words
    counts: OutcomeCounts | None = None  # what the declared outcome kept, over the history
    train_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    def score(self, name: str) -> Scores:
        return next(s for s in self.scores if s.name == name)

    @property
    def product(self) -> Scores:
        return self.score(PRODUCT)

    @property
    def worse_than_baseline(self) -> list[str]:
        """One line per baseline the product loses to, beyond the configured tolerance."""
        product, found = self.product, []
        for baseline in (s for s in self.scores if s.name in BASELINES):
            if baseline.auc > product.auc + self.tolerance_auc:
                found.append(
                    f"{self.kind} model AUC {product.auc:.3f} is below the {baseline.name} "
                    f"baseline's {baseline.auc:.3f}"
                )
            if baseline.brier < product.brier - self.tolerance_brier:
                found.append(
                    f"{self.kind} model Brier {product.brier:.4f} is worse than the "
                    f"{baseline.name} baseline's {baseline.brier:.4f}"
                )
        return found

    @property
    def outcome_warnings(self) -> list[str]:
        """Too few positives in the training or the test period to trust the figures."""
        found = []
        # The deal model predicts a loss; its declared outcome (what OutcomeCounts counts as
        # positive) is the win.
        positive = 0 if self.kind == "deal" else 1
        for part, labels in (("train", self.train_labels), ("test", self.test_labels)):
            positives = int((labels == positive).sum())
            if positives < MIN_POSITIVES:
                found.append(
                    f"{part}: only {positives} positives ({self.outcome}); below about "
                    f"{MIN_POSITIVES} a model's figures are mostly noise: widen the horizon or "
                    "the period, or declare another outcome"
                )
        return found

    def to_text(self) -> str:
        """The side-by-side table and the product's reliability table, for the terminal."""
        lines = [
            f"{self.kind.capitalize()} model backtest: {self.outcome}",
            *([f"  outcome: {self.counts.to_text()}"] if self.counts else []),
            f"  split {self.split:%Y-%m-%d} ({self.ordered_by or ORDERED_BY[self.kind]}): "
            f"train {self.n_train:,} (base rate {self.base_rate_train:.1%}), "
            f"test {self.n_test:,} (base rate {self.base_rate_test:.1%})",
            "",
            f"  {'scorer':<24}{'AUC':>7}{'top-decile':>12}{'lift':>7}{'Brier':>9}"
            f"{'mean pred':>11}{'observed':>10}",
        ]
        for s in self.scores:
            lines.append(
                f"  {s.name:<24}{s.auc:>7.3f}{s.precision_at_top_decile:>12.1%}"
                f"{s.lift_at_top_decile:>6.1f}x{s.brier:>9.4f}{s.mean_predicted:>11.1%}"
                f"{self.base_rate_test:>10.1%}"
            )
        if not self.calibrated:
            lines.append("  (too few recent training examples to calibrate on: uncalibrated)")
        lines += ["", "  product calibration  count  predicted  observed"]
        for b in self.calibration:
            if not b.count:
                continue
            lines.append(
                f"  {b.low:.1f}-{b.high:.1f}  {b.count:>15,}  {b.mean_predicted:>9.1%}"
                f"  {b.observed_rate:>8.1%}"
            )
        lines += [f"  WARNING: {w}" for w in (*self.worse_than_baseline, *self.outcome_warnings)]
        return "\n".join(lines)

    def as_metadata(self) -> dict[str, Any]:
        """Numbers for Dagster run metadata (plotted over time), keyed ``<kind>/...``."""
        metadata: dict[str, Any] = {
            f"{self.kind}/n_train": self.n_train,
            f"{self.kind}/n_test": self.n_test,
            f"{self.kind}/base_rate_test": round(self.base_rate_test, 6),
            f"{self.kind}/worse_than_baseline": bool(self.worse_than_baseline),
        }
        for s in self.scores:
            prefix = f"{self.kind}/{_slug(s.name)}"
            metadata |= {
                f"{prefix}/auc": round(s.auc, 6),
                f"{prefix}/precision_at_top_decile": round(s.precision_at_top_decile, 6),
                f"{prefix}/lift_at_top_decile": round(s.lift_at_top_decile, 6),
                f"{prefix}/brier": round(s.brier, 6),
                f"{prefix}/mean_predicted": round(s.mean_predicted, 6),
            }
        if self.worse_than_baseline:
            metadata[f"{self.kind}/warning"] = "; ".join(self.worse_than_baseline)
        if self.counts is not None:
            metadata |= self.counts.as_metadata(f"{self.kind}/outcome")
        if self.outcome_warnings:
            metadata[f"{self.kind}/outcome/warning"] = "; ".join(self.outcome_warnings)
        return metadata


def backtest_model(
    kind: str,
    conn: duckdb.DuckDBPyConnection,
    *,
    split: str | None = None,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
    progress: Callable[[str], None] = lambda phase: None,
) -> ModelBacktest:
    """Backtest the ``kind`` model on the history in ``conn`` (see the module docstring).
    ``progress`` is told each of :data:`PHASES` as it starts."""
    progress(PHASES[0])
    history = past_examples(kind, conn, config=config, models=models)
    progress(PHASES[1])
    return backtest_history(history, split=split, scoring=scoring)


def backtest_history(
    history: Examples, *, split: str | None = None, scoring: ScoringConfig | None = None
) -> ModelBacktest:
    """Backtest on examples already read (``past_examples``). ``split``: first day of the
    test period (ISO date); default: the last 30% of the examples are tested."""
    kind = history.kind
    if history.size == 0:
        raise ValueError(f"no past {kind} examples with a final outcome yet")
    if split is None:
        split_at = history.times[min(history.size - 1, int(history.size * (1 - TEST_SHARE)))]
    else:
        split_at = np.datetime64(datetime.fromisoformat(split).replace(tzinfo=None), "us")
    # Leads: a horizon's gap, so that every training label was known on the split date.
    gap = np.timedelta64(timedelta(days=lead_horizon_days(history) if kind == "lead" else 0))
    train, test = history.before(split_at - gap), history.from_(split_at)
    return compare(kind, train, test, scoring or ScoringConfig(), split=split_at)


def compare(
    kind: str,
    train: Examples,
    test: Examples,
    scoring: ScoringConfig,
    *,
    split: np.datetime64 | datetime,
    fit: Callable[[str, Examples], Any] = fit_product,
    outcome: str | None = None,
    ordered_by: str = "",
) -> ModelBacktest:
    """The product (``fit``, calibrated as in production) and the baselines, trained on
    ``train`` and scored on ``test``: any examples, a CRM's or an imported sample's."""
    if test.size == 0 or len(np.unique(test.labels)) < 2:
        raise ValueError(f"the {kind} test period needs examples with both outcomes")
    if train.size == 0 or len(np.unique(train.labels)) < 2:
        raise ValueError(f"the {kind} training period needs examples with both outcomes")
    product = calibrate_on_holdout(kind, train, scoring, fit)
    calibrated = hasattr(product, "calibrator")
    predicted = model_probabilities(product, test.frame)
    raw = product.base_predict_frame(test.frame) if calibrated else predicted
    scores = [Scores.of(PRODUCT, test.labels, predicted), Scores.of(UNCALIBRATED, test.labels, raw)]
    for name, baseline_predicted in baseline_predictions(train, test).items():
        scores.append(Scores.of(name, test.labels, baseline_predicted))
    split_time = split if isinstance(split, datetime) else split.astype("datetime64[us]").item()
    return ModelBacktest(
        kind=kind,
        outcome=outcome or (train.counts.definition if train.counts else OUTCOMES.get(kind, kind)),
        split=split_time,
        n_train=train.size,
        n_test=test.size,
        base_rate_train=float(train.labels.mean()),
        base_rate_test=float(test.labels.mean()),
        scores=scores,
        calibration=calibration_table(predicted, test.labels),
        calibrated=calibrated,
        tolerance_auc=scoring.baseline_tolerance.auc,
        tolerance_brier=scoring.baseline_tolerance.brier,
        ordered_by=ordered_by,
        counts=train.counts,
        train_labels=train.labels,
        test_labels=test.labels,
    )


def backtest_models(
    conn: duckdb.DuckDBPyConnection,
    kinds: tuple[str, ...] = KINDS,
    *,
    split: str | None = None,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
    progress: Callable[[str, str], None] = lambda kind, phase: None,
) -> tuple[list[ModelBacktest], dict[str, str]]:
    """Backtests of ``kinds``, and why any could not be run (too little history).
    ``progress`` is told each model and each of its :data:`PHASES` as it starts."""
    reports, skipped = [], {}
    for kind in kinds:
        try:
            reports.append(
                backtest_model(
                    kind,
                    conn,
                    split=split,
                    config=config,
                    models=models,
                    scoring=scoring,
                    progress=lambda phase, kind=kind: progress(kind, phase),
                )
            )
        except ValueError as error:
            skipped[kind] = str(error)
    return reports, skipped


def baseline_predictions(train: Examples, test: Examples) -> dict[str, np.ndarray]:
    """Plain scikit-learn models on the product's features (``train.spec``): numbers
    (``log1p`` where the product takes logs) and one-hot categories, nothing tuned."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from threadpoolctl import threadpool_limits

    spec = train.spec
    numbers = [*spec.numeric, *spec.log_numeric]
    x_train, x_test = _matrix(train.frame, spec), _matrix(test.frame, spec)
    encode = [
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
        (
            "categories",
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
            list(spec.categorical),
        ),
    ]
    models = {
        BASELINES[0]: make_pipeline(ColumnTransformer(encode), LogisticRegression(max_iter=5_000)),
        BASELINES[1]: make_pipeline(
            ColumnTransformer(encode), HistGradientBoostingClassifier(random_state=0)
        ),
    }
    # One OpenMP thread: gradient boosting on a few thousand rows gains nothing from more, and
    # on a busy machine its threads wait on each other (11 s instead of 0.5 s measured here).
    with threadpool_limits(1, user_api="openmp"):
        return {
            name: model.fit(x_train, train.labels).predict_proba(x_test)[:, 1]
            for name, model in models.items()
        }


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


def _matrix(frame: pl.DataFrame, spec: Any) -> Any:
    """A pandas frame: numbers (NaN when missing, ``log1p`` where the product takes logs),
    then categories as strings ("(none)" when missing)."""
    import pandas as pd

    columns: dict[str, Any] = {}
    for name in (*spec.numeric, *spec.log_numeric):
        values = (
            frame[name].cast(pl.Float64, strict=False).fill_nan(None).to_numpy()
            if name in frame.columns
            else np.full(frame.height, np.nan)
        )
        columns[name] = np.log1p(np.maximum(values, 0)) if name in spec.log_numeric else values
    for name in spec.categorical:
        values = (
            frame[name].cast(pl.String).fill_null("(none)").to_list()
            if name in frame.columns
            else ["(none)"] * frame.height
        )
        columns[name] = np.asarray(values, dtype=object)
    return pd.DataFrame(columns)


def _slug(name: str) -> str:
    return name.replace(", ", "_").replace(" ", "_")
