"""Calibrated scores: a model's probabilities mapped onto what happened on a recent holdout.

A model trained on older history can rank well and still be wrong about the rate (the base
rate moved, the label changed, the classes are unbalanced). :func:`train_calibrated` fits the
model on the older part of its training period and a :class:`Calibrator` (Platt or isotonic,
scikit-learn's) on the newest ``holdout_share`` of it, and returns a :class:`Calibrated`
model: the same interface as the model it wraps, calibrated probabilities out, and the
work-now and fast-track cuts taken from the config instead of the best F1 on training data.

The cuts and the method are declared in config/agents.yaml ``scoring:`` (:class:`ScoringConfig`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from revorch.agents.offline.logistic import content_version
from revorch.agents.scoring import LeadCuts, ScoringConfig

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from revorch.agents.features import ModelsConfig
    from revorch.lifecycle.config import LifecycleConfig


@dataclass(frozen=True)
class Calibrator:
    """A monotone map from a model's probability to the rate observed on a holdout."""

    method: str
    # platt: (slope, intercept) on the log-odds; isotonic: the step function's knots.
    slope: float = 1.0
    intercept: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    @classmethod
    def fit(cls, predicted: np.ndarray, labels: np.ndarray, method: str = "platt") -> Calibrator:
        """Fit on a holdout the model never trained on."""
        predicted, labels = np.asarray(predicted, float), np.asarray(labels, int)
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            iso.fit(predicted, labels)
            return cls(
                method,
                x=tuple(round(float(v), 8) for v in iso.X_thresholds_),
                y=tuple(round(float(v), 8) for v in iso.y_thresholds_),
            )
        from sklearn.linear_model import LogisticRegression

        # Next to no regularisation: two parameters, and the holdout is what they must fit.
        platt = LogisticRegression(C=1e6, max_iter=1_000).fit(_logit(predicted)[:, None], labels)
        return cls(
            method,
            slope=round(float(platt.coef_[0][0]), 8),
            intercept=round(float(platt.intercept_[0]), 8),
        )

    def apply(self, predicted: np.ndarray | list[float]) -> np.ndarray:
        """Calibrated probabilities for the model's ``predicted`` ones."""
        predicted = np.asarray(predicted, float)
        if self.method == "isotonic":
            return np.interp(predicted, self.x, self.y)
        return 1.0 / (1.0 + np.exp(-(self.slope * _logit(predicted) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        if self.method == "isotonic":
            return {"method": self.method, "x": list(self.x), "y": list(self.y)}
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        if data["method"] == "isotonic":
            return cls("isotonic", x=tuple(data["x"]), y=tuple(data["y"]))
        return cls("platt", slope=data["slope"], intercept=data["intercept"])


class Calibrated:
    """A lead, deal or renewal model whose probabilities pass through a :class:`Calibrator`.

    Everything else (``metadata``, ``fit_scores``, ``reasons``, ...) is the wrapped model's.
    For leads, ``threshold`` (work now) and ``fast_track_cut`` are the configured cuts, and
    ``percentile`` ranks a calibrated probability among the training leads' calibrated ones.
    """

    def __init__(
        self,
        kind: str,
        base: Any,
        calibrator: Calibrator,
        *,
        cuts: LeadCuts | None = None,
        holdout: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.base = base
        self.calibrator = calibrator
        self.cuts = cuts or LeadCuts()
        self.holdout = holdout or {}
        self.version = content_version(f"{kind}-calibrated", self._content())

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not define: the wrapped model answers.
        return getattr(self.__dict__.get("base"), name)

    def predict(self, inputs: list[dict[str, Any]]) -> list[float]:
        return self.calibrator.apply(self.base.predict(inputs)).tolist()

    def predict_each(self, inputs: list[dict[str, Any]], encoded: Any = None) -> list[float]:
        # Defined here: through __getattr__ the base would answer uncalibrated.
        return self.calibrator.apply(self.base.predict_each(inputs, encoded)).tolist()

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        return self.calibrator.apply(self.base_predict_frame(frame))

    def base_predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """The wrapped model's own (uncalibrated) probabilities."""
        return model_probabilities(self.base, frame)

    @property
    def threshold(self) -> float:
        return self.cuts.work_now

    @property
    def fast_track_cut(self) -> float:
        return self.cuts.fast_track

    def percentile(self, probability: float) -> float:
        quantiles = self.__dict__.get("_quantiles")
        if quantiles is None:  # the same for every lead: computed once
            quantiles = self.__dict__["_quantiles"] = self.calibrator.apply(
                self.base.intent_quantiles
            )
        return float(np.searchsorted(quantiles, probability, side="right") / len(quantiles))

    def _content(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "calibrated": True,
            "calibration": self.calibrator.to_dict(),
            "cuts": self.cuts.model_dump(),
            "holdout": self.holdout,
            "base": json.loads(self.base.to_json()),
        }

    def to_json(self) -> str:
        return json.dumps({"version": self.version, **self._content()}, sort_keys=True)


def load_model(kinds: dict[str, type], kind: str, text: str) -> Any:
    """A stored model of ``kind`` (``agents.models``), calibrated or not."""
    data = json.loads(text)
    if not data.get("calibrated"):
        return kinds[kind].from_json(text)
    base = kinds[kind].from_json(json.dumps(data["base"]))
    return Calibrated(
        kind,
        base,
        Calibrator.from_dict(data["calibration"]),
        cuts=LeadCuts(**data["cuts"]),
        holdout=data.get("holdout"),
    )


def train_calibrated(
    kind: str,
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
    scoring: ScoringConfig | None = None,
) -> Any:
    """The ``kind`` model, with the features and outcome ``models`` declares, fitted on its
    training period but the newest ``holdout_share``, calibrated on that newest share (see
    the module docstring). A holdout too small to calibrate on leaves the model as trained on
    everything, uncalibrated."""
    from revorch.agents.offline.history import fit_product, past_examples

    scoring = scoring or ScoringConfig()
    history = past_examples(kind, conn, config=config, models=models)
    return calibrate_on_holdout(kind, history, scoring, fit_product)


def calibrate_on_holdout(kind: str, history: Any, scoring: ScoringConfig, fit: Any) -> Any:
    """:func:`train_calibrated` on the ``history`` examples (``revorch/agents/offline/
    history.py``), with ``fit(kind, examples)`` fitting the model itself."""
    settings = scoring.calibration
    older, newest = history.split_newest(settings.holdout_share)
    labels = newest.labels
    if newest.size < settings.min_holdout or len(np.unique(labels)) < 2:
        return fit(kind, history)
    base = fit(kind, older)
    calibrator = Calibrator.fit(model_probabilities(base, newest.frame), labels, settings.method)
    holdout = {
        "rows": newest.size,
        "from": str(newest.times.min())[:10],
        "observed_rate": round(float(labels.mean()), 6),
    }
    return Calibrated(kind, base, calibrator, cuts=scoring.lead_cuts, holdout=holdout)


def model_probabilities(model: Any, frame: pl.DataFrame) -> np.ndarray:
    """Probabilities for a frame from any of the three models, calibrated or not (deal and
    renewal models keep their logistic model in ``model``)."""
    if hasattr(model, "predict_frame"):
        return model.predict_frame(frame)
    return model.model.predict_frame(frame)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
