"""Vectorised random draws the generators share: weighted choices and calibrated odds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def weighted(rng: np.random.Generator, weights: Sequence[float], size: int) -> np.ndarray:
    """Indexes into ``weights`` drawn with probability proportional to each weight."""
    p = np.asarray(weights, dtype=np.float64)
    return rng.choice(len(p), size=size, p=p / p.sum())


def mixed(
    rng: np.random.Generator,
    first: Sequence[float],
    second: Sequence[float],
    share_second: np.ndarray,
) -> np.ndarray:
    """Per row, an index drawn from ``second``'s weights with ``share_second``, else ``first``."""
    size = len(share_second)
    use_second = rng.random(size) < share_second
    u = rng.random(size)
    out = np.empty(size, dtype=np.int64)
    for flag, weights in ((False, first), (True, second)):
        cdf = np.cumsum(weights) / np.sum(weights)
        rows = use_second == flag
        out[rows] = np.searchsorted(cdf, u[rows], side="right")
    return np.minimum(out, len(first) - 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def calibrated_probability(score: np.ndarray, target: float) -> np.ndarray:
    """``sigmoid(score - c)`` with ``c`` chosen so that the mean probability is ``target``.

    Keeps headline rates (MQL share, win rate, churn) stable whatever the score's scale.
    """
    if len(score) == 0:
        return np.zeros(0)
    lo, hi = -30.0, 30.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if sigmoid(score - mid).mean() > target:
            lo = mid
        else:
            hi = mid
    return sigmoid(score - (lo + hi) / 2)


def pick(values: Sequence[str], index: np.ndarray) -> pl.Series:
    """The strings at ``index`` as a polars string column."""
    return pl.Series(values, dtype=pl.String).gather(pl.Series(index, dtype=pl.Int64))


def gamma_seconds(
    rng: np.random.Generator, shape: float, scale: np.ndarray | float, size: int
) -> np.ndarray:
    """Gamma-distributed durations in whole seconds (``scale`` in seconds)."""
    return np.rint(rng.gamma(shape, 1.0, size) * scale).astype(np.int64)
