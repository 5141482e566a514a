"""A small, serialisable logistic regression over named features.

Every offline model (leads, deals, renewals) is one of these: numeric features (optionally
``log1p``-transformed) standardised with the training mean and spread, categorical features
one-hot encoded over the values seen in training, fitted by scikit-learn and then kept as
plain numbers, so a model is a JSON document whose content hash is its version and scoring
is one matrix product (vectorised over a polars frame).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

# Rounded so the JSON (and with it the version hash) does not depend on the last float bits.
_DIGITS = 10
# Above this many rows, encoding through a polars frame beats a Python loop.
_ROWS_VIA_FRAME = 500


@dataclass(frozen=True)
class FeatureSpec:
    """Which input keys a model reads, and how."""

    numeric: tuple[str, ...] = ()
    log_numeric: tuple[str, ...] = ()  # log1p first: counts and money are heavy-tailed
    categorical: tuple[str, ...] = ()
    # Categoricals whose values outside the vocabulary share one "(other)" column, and the
    # most values each keeps a column of its own, by (name, limit).
    grouped: tuple[str, ...] = ()
    max_categories: tuple[tuple[str, int], ...] = ()


OTHER = "(other)"


@dataclass
class LogisticModel:
    """A fitted logistic regression with its encoding; see the module docstring."""

    spec: FeatureSpec
    means: dict[str, float]
    scales: dict[str, float]
    vocabularies: dict[str, list[str]]
    coefficients: dict[str, float]  # by encoded column: "feature" or "feature=value"
    intercept: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        frame: pl.DataFrame,
        labels: np.ndarray,
        spec: FeatureSpec,
        *,
        min_category_count: int = 5,
        regularisation: float = 1.0,
        metadata: dict[str, Any] | None = None,
    ) -> LogisticModel:
        """Fit on ``frame`` (one row per example) against 0/1 ``labels``.

        Categories seen fewer than ``min_category_count`` times are treated as unknown, so a
        handful of rows cannot earn a coefficient of their own.
        """
        # scikit-learn (with SciPy) takes about a second to import: only when a model is fitted.
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels, dtype=np.int64)
        if len(np.unique(labels)) < 2:
            raise ValueError("training needs both outcomes among the labels")
        means, scales = {}, {}
        for name in (*spec.numeric, *spec.log_numeric):
            values = _numeric_column(frame, name, name in spec.log_numeric)
            means[name] = round(float(values.mean()), _DIGITS)
            scales[name] = round(float(values.std()) or 1.0, _DIGITS)
        vocabularies = {}
        limits = dict(spec.max_categories)
        for name in spec.categorical:
            counts = frame[name].cast(pl.String).drop_nulls().value_counts()
            counts = counts.filter(pl.col("count") >= min_category_count)
            # The most frequent (ties by value), learnt from this training fold only.
            counts = counts.sort(["count", name], descending=[True, False])
            kept = counts[name].to_list()[: limits.get(name)]
            vocabularies[name] = sorted(kept)
        model = cls(spec, means, scales, vocabularies, {}, 0.0, dict(metadata or {}))
        matrix = model._encode(frame)
        fitted = LogisticRegression(C=regularisation, max_iter=5_000).fit(matrix, labels)
        model.coefficients = {
            column: round(float(c), _DIGITS)
            for column, c in zip(model.columns, fitted.coef_[0], strict=True)
        }
        model.intercept = round(float(fitted.intercept_[0]), _DIGITS)
        return model

    @property
    def columns(self) -> list[str]:
        """The encoded columns, in the order of the coefficient vector."""
        # Kept while the spec and vocabularies are the same objects: scoring asks per row.
        key = (id(self.spec), id(self.vocabularies))
        cached = self.__dict__.get("_columns")
        if cached is not None and cached[0] == key:
            return list(cached[1])
        numeric = [*self.spec.numeric, *self.spec.log_numeric]
        categorical = [
            f"{name}={value}"
            for name in self.spec.categorical
            for value in [*self.vocabularies[name], *([OTHER] if name in self.spec.grouped else [])]
        ]
        self.__dict__["_columns"] = (key, tuple(numeric + categorical))
        return numeric + categorical

    def predict_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """Probabilities for every row of ``frame`` (missing columns count as unknown)."""
        weights = np.asarray([self.coefficients[c] for c in self.columns])
        return _sigmoid(self._encode(frame) @ weights + self.intercept)

    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """Probabilities for a few rows (dicts); for many, :meth:`predict_frame` is faster."""
        if len(rows) > _ROWS_VIA_FRAME:
            keys = [*self.spec.numeric, *self.spec.log_numeric, *self.spec.categorical]
            frame = pl.DataFrame({k: [r.get(k) for r in rows] for k in keys}, strict=False)
            return self.predict_frame(frame)
        weights = np.asarray([self.coefficients[c] for c in self.columns])
        encoded = np.asarray([self._encode_row(r) for r in rows]).reshape(len(rows), -1)
        return _sigmoid(encoded @ weights + self.intercept)

    def predict_each(
        self, rows: list[dict[str, Any]], encoded: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`predict_rows` of each row alone, for many rows at once: the same bits as
        scoring them one by one (a matrix product over many rows may sum in another order,
        so each row keeps its own product; the encoding is vectorised)."""
        weights = np.asarray([self.coefficients[c] for c in self.columns])
        encoded = self.encode_rows(rows) if encoded is None else encoded
        z = np.fromiter(
            ((encoded[i : i + 1] @ weights)[0] for i in range(len(rows))),
            dtype=np.float64,
            count=len(rows),
        )
        return _sigmoid(z + self.intercept)

    def encode_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """:meth:`_encode_row` of every row, as one matrix (the same values)."""
        parts = []
        for name in (*self.spec.numeric, *self.spec.log_numeric):
            values = [_number(row.get(name)) for row in rows]
            if name in self.spec.log_numeric:
                values = [math.log1p(max(x, 0.0)) for x in values]
            parts.append(
                (np.asarray(values, dtype=np.float64) - self.means[name]) / self.scales[name]
            )
        for name in self.spec.categorical:
            vocabulary = self.vocabularies[name]
            grouped = name in self.spec.grouped
            index = {v: j for j, v in enumerate(vocabulary)}
            block = np.zeros((len(rows), len(vocabulary) + grouped))
            for i, row in enumerate(rows):
                value = row.get(name)
                if value is None:
                    continue
                j = index.get(str(value))
                if j is not None:
                    block[i, j] = 1.0
                elif grouped:
                    block[i, -1] = 1.0
            parts.extend(block.T)
        if not parts:
            return np.zeros((len(rows), 0))
        return np.ascontiguousarray(np.column_stack(parts), dtype=np.float64)

    def contributions(self, row: dict[str, Any]) -> list[tuple[str, float]]:
        """How much each feature moved one row's log-odds, largest effect first."""
        effects = [
            (column, x * self.coefficients[column])
            for column, x in zip(self.columns, self._encode_row(row), strict=True)
            if x * self.coefficients[column] != 0
        ]
        return sorted(effects, key=lambda e: (-abs(e[1]), e[0]))

    def effects(self, encoded: np.ndarray) -> np.ndarray:
        """Each feature's effect on each row's log-odds, for rows from :meth:`encode_rows`
        (read one row with :meth:`contributions_of`)."""
        return encoded * np.asarray([self.coefficients[c] for c in self.columns])

    def contributions_of(self, effects: np.ndarray) -> list[tuple[str, float]]:
        """:meth:`contributions` of the row whose :meth:`effects` these are."""
        columns, values = self.columns, effects.tolist()
        kept = [(columns[j], values[j]) for j in np.flatnonzero(effects).tolist()]
        return sorted(kept, key=lambda e: (-abs(e[1]), e[0]))

    def _encode_row(self, row: dict[str, Any]) -> list[float]:
        """One row encoded like :meth:`_encode`, without building a frame (fast for one)."""
        values = []
        for name in (*self.spec.numeric, *self.spec.log_numeric):
            x = _number(row.get(name))
            if name in self.spec.log_numeric:
                x = math.log1p(max(x, 0.0))
            values.append((x - self.means[name]) / self.scales[name])
        for name in self.spec.categorical:
            value = row.get(name)
            value = None if value is None else str(value)
            values += [1.0 if value == v else 0.0 for v in self.vocabularies[name]]
            if name in self.spec.grouped:
                rare = value is not None and value not in self.vocabularies[name]
                values.append(1.0 if rare else 0.0)
        return values

    def _encode(self, frame: pl.DataFrame) -> np.ndarray:
        parts = [
            (_numeric_column(frame, name, name in self.spec.log_numeric) - self.means[name])
            / self.scales[name]
            for name in (*self.spec.numeric, *self.spec.log_numeric)
        ]
        for name in self.spec.categorical:
            values = (
                frame[name].cast(pl.String)
                if name in frame.columns
                else pl.Series([None] * frame.height, dtype=pl.String)
            )
            parts += [(values == v).fill_null(False).to_numpy() for v in self.vocabularies[name]]
            if name in self.spec.grouped:
                known = pl.Series(self.vocabularies[name], dtype=pl.String)
                rare = values.is_not_null() & ~values.is_in(known)
                parts.append(rare.to_numpy())
        if not parts:
            return np.zeros((frame.height, 0))
        return np.column_stack(parts).astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        """The model as plain JSON-ready data."""
        spec: dict[str, Any] = {
            "numeric": list(self.spec.numeric),
            "log_numeric": list(self.spec.log_numeric),
            "categorical": list(self.spec.categorical),
        }
        if self.spec.grouped:  # only then: older models keep their JSON and their version
            spec["grouped"] = list(self.spec.grouped)
            spec["max_categories"] = [list(pair) for pair in self.spec.max_categories]
        return {
            "spec": spec,
            "means": self.means,
            "scales": self.scales,
            "vocabularies": self.vocabularies,
            "coefficients": self.coefficients,
            "intercept": self.intercept,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogisticModel:
        spec = dict(data["spec"])
        limits = tuple((name, int(n)) for name, n in spec.pop("max_categories", []))
        spec = FeatureSpec(**{k: tuple(v) for k, v in spec.items()}, max_categories=limits)
        return cls(
            spec,
            dict(data["means"]),
            dict(data["scales"]),
            {k: list(v) for k, v in data["vocabularies"].items()},
            dict(data["coefficients"]),
            float(data["intercept"]),
            dict(data.get("metadata", {})),
        )


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: equal content, equal text, equal hash."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_version(prefix: str, data: Any) -> str:
    """``<prefix>-<first 8 hex digits of the sha256 of the canonical JSON>``."""
    digest = hashlib.sha256(canonical_json(data).encode()).hexdigest()
    return f"{prefix}-{digest[:8]}"


def _numeric_column(frame: pl.DataFrame, name: str, log: bool) -> np.ndarray:
    if name not in frame.columns:
        return np.zeros(frame.height)
    values = frame[name].cast(pl.Float64).fill_null(0.0).fill_nan(0.0).to_numpy()
    return np.log1p(np.maximum(values, 0.0)) if log else values


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(x) else x


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def logit(p: float) -> float:
    """Log-odds of ``p`` (clipped away from 0 and 1)."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))
