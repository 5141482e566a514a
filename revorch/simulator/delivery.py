"""How the history reaches the landing zone: event ids, batches, shuffling, faults.

Events are numbered in time order (``sim-<seed>-<10 digits>``) and cut into batches of
``batch_size`` roughly by time. About one event in twelve is displaced by around a batch,
so a later change sometimes arrives before an earlier one. Then faults are injected:
``malformed_share`` of the lines are replaced by malformed ones, ``duplicate_share`` of the
valid events are sent again in one of the next three batches, and (when duplicates are on)
one whole batch is delivered a second time, two batches later.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from revorch.simulator.config import SimulationConfig
from revorch.simulator.events import EventSet, render_lines, render_timestamp
from revorch.simulator.malformed import REASONS, corrupt, schedule

DISPLACED_SHARE = 1 / 12
# Events per serialisation chunk: bounds memory whatever the history's size.
CHUNK_EVENTS = 1_000_000


@dataclass(frozen=True)
class _SetPlan:
    """One event set's rows in emission order, and its re-sent duplicates."""

    rows: np.ndarray
    seq: np.ndarray
    slot: np.ndarray  # ascending
    reason: np.ndarray  # malformed reason code, -1 for a valid line
    dup_rows: np.ndarray
    dup_seq: np.ndarray
    dup_batch: np.ndarray  # ascending
    dup_key: np.ndarray


@dataclass(frozen=True)
class Batch:
    """One batch file's lines, in order (``line`` may hold the invalid-UTF-8 mark)."""

    number: int
    frame: pl.DataFrame
    redelivery_of: int | None = None


@dataclass
class DeliveryPlan:
    """Where every event goes; iterate :meth:`batches` to get the lines."""

    config: SimulationConfig
    sets: list[EventSet]
    plans: list[_SetPlan]
    main_batches: int
    total_batches: int
    redelivered: int | None
    redeliver_after: int | None
    reason_counts: dict[str, int] = field(default_factory=dict)
    duplicate_events: int = 0

    @property
    def event_prefix(self) -> str:
        return f"sim-{self.config.seed}-"

    def batches(self) -> Iterator[Batch]:
        """Each batch in the order it is to be written, the redelivered copy included."""
        size = self.config.batch_size
        per_chunk = max(1, CHUNK_EVENTS // size)
        kept: pl.DataFrame | None = None
        for b0 in range(0, self.total_batches, per_chunk):
            b1 = min(b0 + per_chunk, self.total_batches)
            chunk = self._chunk(b0, b1)
            parts = chunk.partition_by("batch", as_dict=True, maintain_order=True)
            for b in range(b0, b1):
                frame = parts.get((b,), chunk.clear()).drop("batch", "key")
                yield Batch(b, frame)
                if b == self.redelivered:
                    kept = frame
                if b == self.redeliver_after and kept is not None:
                    yield Batch(self.redelivered, kept, redelivery_of=self.redelivered)

    def _chunk(self, b0: int, b1: int) -> pl.DataFrame:
        size = self.config.batch_size
        frames = []
        for events, plan in zip(self.sets, self.plans, strict=True):
            lo, hi = np.searchsorted(plan.slot, [b0 * size, b1 * size])
            if hi > lo:
                frames.append(
                    self._render(
                        events,
                        plan.rows[lo:hi],
                        plan.seq[lo:hi],
                        plan.slot[lo:hi].astype(np.float64),
                        plan.slot[lo:hi] // size,
                        plan.reason[lo:hi],
                        duplicate=False,
                    )
                )
            lo, hi = np.searchsorted(plan.dup_batch, [b0, b1])
            if hi > lo:
                frames.append(
                    self._render(
                        events,
                        plan.dup_rows[lo:hi],
                        plan.dup_seq[lo:hi],
                        plan.dup_key[lo:hi],
                        plan.dup_batch[lo:hi],
                        np.full(hi - lo, -1),
                        duplicate=True,
                    )
                )
        if not frames:
            return _empty_chunk()
        chunk = pl.concat(frames)
        chunk = corrupt(chunk, self.event_prefix)
        return chunk.sort("batch", "key").drop("seq")

    def _render(
        self,
        events: EventSet,
        rows: np.ndarray,
        seq: np.ndarray,
        key: np.ndarray,
        batch: np.ndarray,
        reason: np.ndarray,
        *,
        duplicate: bool,
    ) -> pl.DataFrame:
        n = len(rows)
        frame = events.frame[rows].with_columns(
            seq=pl.Series(seq, dtype=pl.Int64),
            key=pl.Series(key, dtype=pl.Float64),
            batch=pl.Series(batch, dtype=pl.Int64),
            reason=pl.Series(reason, dtype=pl.Int64),
        )
        seq_col = pl.col("seq")
        return frame.select(
            "batch",
            "key",
            "seq",
            event_id=pl.lit(self.event_prefix) + seq_col.cast(pl.String).str.zfill(10),
            object_type=pl.lit(events.object_type),
            object_id=events.object_id(),
            occurred_at=render_timestamp(pl.col("at")),
            reason=pl.when(pl.col("reason") >= 0).then(
                pl.col("reason").replace_strict(
                    dict(enumerate(REASONS)), default=None, return_dtype=pl.String
                )
            ),
            duplicate=pl.repeat(duplicate, n, dtype=pl.Boolean),
            line=render_lines(events, seq_col, self.event_prefix),
        )


def _empty_chunk() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "batch": pl.Int64,
            "key": pl.Float64,
            "event_id": pl.String,
            "object_type": pl.String,
            "object_id": pl.String,
            "occurred_at": pl.String,
            "reason": pl.String,
            "duplicate": pl.Boolean,
            "line": pl.String,
        }
    )


def plan_delivery(config: SimulationConfig, sets: list[EventSet]) -> DeliveryPlan:
    """Number, order, batch and fault-inject the events of ``sets`` (nothing rendered yet)."""
    rng = config.rng(6)
    size = config.batch_size
    lengths = np.asarray([s.frame.height for s in sets], dtype=np.int64)
    n = int(lengths.sum())
    code = np.repeat(np.arange(len(sets)), lengths)
    row = np.concatenate([np.arange(k) for k in lengths]) if n else np.zeros(0, np.int64)
    at = np.concatenate([s.frame["at"].to_numpy() for s in sets]) if n else row
    # Time order numbers the events; ties by event set, then row, so it is reproducible.
    order = np.lexsort((row, code, at))
    seq = np.empty(n, dtype=np.int64)
    seq[order] = np.arange(n)

    key = np.arange(n, dtype=np.float64)
    displaced = np.flatnonzero(rng.random(n) < DISPLACED_SHARE)
    key[displaced] += rng.normal(0.0, 0.75 * size, len(displaced))
    slot_of_seq = np.empty(n, dtype=np.int64)
    slot_of_seq[np.argsort(key, kind="stable")] = np.arange(n)
    slot = slot_of_seq[seq]
    main_batches = max(1, -(-n // size))

    reason_of_seq = np.full(n, -1, dtype=np.int64)
    n_bad = round(config.malformed_share * n)
    bad_seq = rng.choice(n, n_bad, replace=False) if n_bad else np.zeros(0, np.int64)
    reason_of_seq[bad_seq] = schedule(rng, n_bad)
    reason = reason_of_seq[seq]

    valid_seq = np.flatnonzero(reason_of_seq < 0)
    n_dup = round(config.duplicate_share * len(valid_seq))
    dup_of_seq = np.zeros(n, dtype=bool)
    if n_dup:
        dup_of_seq[rng.choice(valid_seq, n_dup, replace=False)] = True
    dup_batch_of_seq = np.minimum(slot_of_seq // size + 1 + rng.integers(0, 3, n), main_batches)
    dup_key_of_seq = dup_batch_of_seq * size + rng.random(n) * size
    dup_batch_of_seq = np.where(dup_of_seq, dup_batch_of_seq, -1)
    total_batches = main_batches + int((dup_batch_of_seq == main_batches).any())

    plans = []
    start = 0
    for length in lengths:
        items = np.arange(start, start + length)
        start += length
        by_slot = items[np.argsort(slot[items], kind="stable")]
        dups = items[dup_of_seq[seq[items]]]
        dups = dups[np.argsort(dup_batch_of_seq[seq[dups]], kind="stable")]
        plans.append(
            _SetPlan(
                rows=row[by_slot],
                seq=seq[by_slot],
                slot=slot[by_slot],
                reason=reason[by_slot],
                dup_rows=row[dups],
                dup_seq=seq[dups],
                dup_batch=dup_batch_of_seq[seq[dups]],
                dup_key=dup_key_of_seq[seq[dups]],
            )
        )

    redelivered = redeliver_after = None
    if config.duplicate_share > 0:
        redelivered = int(rng.integers(0, main_batches))
        redeliver_after = min(redelivered + 2, total_batches - 1)
    counts = np.bincount(reason_of_seq[reason_of_seq >= 0], minlength=len(REASONS))
    return DeliveryPlan(
        config=config,
        sets=sets,
        plans=plans,
        main_batches=main_batches,
        total_batches=total_batches,
        redelivered=redelivered,
        redeliver_after=redeliver_after,
        reason_counts={r: int(c) for r, c in zip(REASONS, counts, strict=True)},
        duplicate_events=n_dup,
    )
