"""Simulation settings and the time window they describe."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

DAY = 86_400
HOUR = 3_600
# The default history: the 669 days (about 22 months) that end today, so a simulated CRM is
# current for the wall clock that time rules read (revorch/clock.py).
DEFAULT_HISTORY_DAYS = 669


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. The same config always produces the same event lines.

    ``contacts`` sets the scale (companies, owners, deals and tickets follow from it);
    ``start``/``end`` bound the history window (UTC dates, ``end`` excluded; by default the
    ``DEFAULT_HISTORY_DAYS`` that end today: pin both for a history that never changes);
    ``malformed_share`` of emitted lines are replaced by malformed ones and
    ``duplicate_share`` of valid events are emitted again in a later batch; ``batch_size``
    is the number of events per batch file and ``source`` the landing-zone source name.
    """

    contacts: int = 5_000
    seed: int = 42
    start: str = ""
    end: str = ""
    malformed_share: float = 0.0
    duplicate_share: float = 0.0
    batch_size: int = 50_000
    source: str = "simulator"
    # Known true effects, for testing the uplift read-out: ((playbook, points), ...) raises the
    # MQL -> SQL conversion of every contact the playbook treats by ``points`` (0.10 = ten
    # points). The simulator cannot see Revorch's actions, so "treated" is the holdout
    # assignment itself (revorch/experiments/assignment.py) at ``holdout_share``.
    playbook_effects: tuple[tuple[str, float], ...] = ()
    holdout_share: float = 0.10
    # When Revorch starts exposing (an ISO instant with a time zone, or a date): the effects
    # then raise only the conversions of contacts still undecided at that moment, so the
    # history before it is the same for both arms and the set of contacts Revorch exposes
    # then cannot depend on the arm. Empty: the effects act over the whole history.
    effects_from: str = ""

    def __post_init__(self) -> None:
        # Resolved once, so the config (and every event it produces) names its own window.
        end = self.end or datetime.now(UTC).date().isoformat()
        start = (
            self.start
            or (date.fromisoformat(end) - timedelta(days=DEFAULT_HISTORY_DAYS)).isoformat()
        )
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "start", start)
        if self.seed < 0:
            raise ValueError("seed must be a non-negative integer")
        if self.contacts < 1:
            raise ValueError("contacts must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0.0 <= self.malformed_share < 1.0:
            raise ValueError("malformed_share must be in [0, 1)")
        if not 0.0 <= self.duplicate_share <= 1.0:
            raise ValueError("duplicate_share must be in [0, 1]")
        if not 0.0 <= self.holdout_share < 1.0:
            raise ValueError("holdout_share must be in [0, 1)")
        if any(not -1.0 <= points <= 1.0 for _, points in self.playbook_effects):
            raise ValueError("a playbook effect is a change of probability, in [-1, 1]")
        if self.effects_from:
            _instant(self.effects_from)  # refuses what is not an instant
        if self.window[1] - self.window[0] < 30 * DAY:
            raise ValueError("the history window must span at least 30 days")

    @property
    def window(self) -> tuple[int, int]:
        """Start and end of the history as epoch seconds."""
        return _epoch(self.start), _epoch(self.end)

    @property
    def effects_start(self) -> int | None:
        """``effects_from`` as epoch seconds (None: effects act over the whole history)."""
        return _instant(self.effects_from) if self.effects_from else None

    def rng(self, part: int) -> np.random.Generator:
        """An independent, reproducible random stream for one part of the simulation."""
        return np.random.default_rng([self.seed, part])


def _epoch(day: str) -> int:
    parsed = date.fromisoformat(day)
    return int(datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC).timestamp())


def _instant(value: str) -> int:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        if len(value) > 10:
            raise ValueError(f"effects_from needs a time zone: {value!r}")
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
