"""Does the uplift read-out recover a known effect? Its estimate per replication, and coverage.

A simulated CRM with a known effect per playbook (``SimulationConfig.playbook_effects``) is run
through the real graph once; its exposed units (``metrics.playbook_units``) are then split into
replications that never interact (the simulator draws each company's contacts together, so a
replication is a set of companies), and each replication is read out as the asset reads a
playbook (:func:`revorch.experiments.uplift.estimate_uplift`). Coverage is the share of
replications whose interval holds the true effect of its own units, as the simulator applied it
(:func:`revorch.simulator.pipeline.true_uplift`). bench/uplift_recovery.py and
tests/test_uplift_recovery.py drive it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from revorch.experiments.uplift import Estimate, estimate_uplift


@dataclass(frozen=True)
class Replication:
    replication: int
    true_effect: float  # the mean of the simulator's effect over this replication's units
    estimate: Estimate | None  # None: an arm too small, or an outcome that never varies


@dataclass(frozen=True)
class Coverage:
    replications: int  # with an estimate
    covered: int
    mean_true_effect: float
    mean_error: float  # estimate minus truth, averaged over the replications
    error_std_error: float  # of that mean, from the replications' own spread
    exposed_per_replication: float
    holdout_per_replication: float

    @property
    def rate(self) -> float:
        return self.covered / self.replications if self.replications else 0.0

    @property
    def bias_z(self) -> float:
        """The mean error in standard errors: far from 0 when the read-out is biased."""
        return self.mean_error / self.error_std_error if self.error_std_error else 0.0


def estimate_replications(units: pl.DataFrame) -> list[Replication]:
    """One estimate per replication of one playbook and outcome. ``units`` has the columns of
    ``metrics.playbook_units`` (``value``, ``arm``, ``covariate``) for mature units only, plus
    ``replication`` (an integer) and ``true_effect`` (per unit)."""
    out = []
    for (replication,), group in units.sort("replication").group_by(
        ["replication"], maintain_order=True
    ):
        out.append(
            Replication(
                int(replication),
                float(group["true_effect"].mean()),
                estimate_uplift(
                    group["value"].to_numpy(),
                    (group["arm"] == "treatment").to_numpy(),
                    group["covariate"].to_numpy(),
                ),
            )
        )
    return out


def coverage(replications: list[Replication]) -> Coverage:
    """How often the replications' intervals hold their true effect, and the mean error."""
    read = [r for r in replications if r.estimate is not None]
    errors = np.asarray([r.estimate.effect - r.true_effect for r in read])
    k = len(read)
    return Coverage(
        replications=k,
        covered=sum(r.estimate.covers(r.true_effect) for r in read),
        mean_true_effect=float(np.mean([r.true_effect for r in read])) if k else 0.0,
        mean_error=float(errors.mean()) if k else 0.0,
        error_std_error=float(errors.std(ddof=1) / np.sqrt(k)) if k > 1 else 0.0,
        exposed_per_replication=(
            float(np.mean([r.estimate.n_treatment + r.estimate.n_holdout for r in read]))
            if k
            else 0.0
        ),
        holdout_per_replication=(
            float(np.mean([r.estimate.n_holdout for r in read])) if k else 0.0
        ),
    )
