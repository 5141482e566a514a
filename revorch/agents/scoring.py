"""The ``scoring:`` section of config/agents.yaml: how the offline models' probabilities are
calibrated, the lead cuts applied to them, and how far a model may trail its plain baseline
before the backtest warns (revorch/agents/offline/calibration.py, revorch/agents/model_backtest.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationSettings(_Strict):
    """How the probabilities are calibrated."""

    # platt: a logistic curve on the model's log-odds (two numbers, steady on a few hundred
    # rows, keeps the ranking); isotonic: a step function (needs more rows, can tie scores).
    method: Literal["platt", "isotonic"] = "platt"
    holdout_share: float = Field(default=0.2, gt=0, lt=0.5)
    # Below this many holdout rows (or with one outcome only) the model stays uncalibrated.
    min_holdout: int = Field(default=50, ge=10)


class LeadCuts(_Strict):
    """Cuts on the calibrated probability of reaching the lead outcome."""

    work_now: float = Field(default=0.3, gt=0, lt=1)  # at or above: work it now
    fast_track: float = Field(default=0.5, gt=0, lt=1)  # and a fitting company: fast-track

    @model_validator(mode="after")
    def _fast_track_is_above_work_now(self) -> LeadCuts:
        if self.fast_track < self.work_now:
            raise ValueError("cuts.fast_track must be at least cuts.work_now")
        return self


class BaselineTolerance(_Strict):
    """How much worse than its plain scikit-learn baseline a model may be before the
    backtest warns (in the CLI and in run metadata)."""

    auc: float = Field(default=0.01, ge=0)
    brier: float = Field(default=0.002, ge=0)


class ScoringConfig(_Strict):
    """The ``scoring:`` section of config/agents.yaml."""

    calibration: CalibrationSettings = CalibrationSettings()
    lead_cuts: LeadCuts = LeadCuts()
    baseline_tolerance: BaselineTolerance = BaselineTolerance()
