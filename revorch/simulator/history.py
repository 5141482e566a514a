"""Simulate the CRM's history and publish it to a landing zone (or return it as a frame)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from revorch.landing import LandingZone
from revorch.simulator.config import SimulationConfig
from revorch.simulator.delivery import Batch, DeliveryPlan, plan_delivery
from revorch.simulator.malformed import INVALID_UTF8_BYTES, INVALID_UTF8_MARK
from revorch.simulator.world import build_world

_MARK_BYTES = INVALID_UTF8_MARK.encode()


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate_history` wrote.

    An ingestion of all of it should account for every line as
    ``lines == events + malformed + expected_duplicates``: ``events`` distinct valid
    events to load, ``malformed`` lines to quarantine, and ``expected_duplicates`` lines
    that repeat something already delivered (re-sent events plus the re-delivered batch).
    """

    batches: int
    lines: int
    events: int
    events_by_type: dict[str, int]
    malformed: int
    malformed_by_reason: dict[str, int]
    duplicate_events: int
    redelivered_batches: int
    redelivered_lines: int
    seconds: float
    paths: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def expected_duplicates(self) -> int:
        return self.duplicate_events + self.redelivered_lines


def simulate_history(
    zone: LandingZone,
    config: SimulationConfig,
    *,
    progress: Callable[[Iterator[Batch], int], Iterable[Batch]] | None = None,
) -> SimulationSummary:
    """Generate the history window and publish it to ``zone`` as batches of ``config.source``.

    Batches are written one after the other, so their ids sort in delivery order.
    ``progress`` wraps the batches as they are written, given their number (e.g. ``tqdm``).
    """
    started = time.perf_counter()
    plan = _plan(config)
    paths: list[Path] = []
    counts = _Counts()
    batches: Iterable[Batch] = plan.batches()
    if progress is not None:
        batches = progress(plan.batches(), plan.total_batches + (plan.redelivered is not None))
    for batch in batches:
        counts.add(batch)
        with zone.open_batch(config.source) as tmp:
            tmp.write_bytes(batch_bytes(batch.frame))
        paths.append(zone.incoming_dir / tmp.name.removesuffix(".part"))
    return counts.summary(plan, time.perf_counter() - started, tuple(paths))


def history_frame(config: SimulationConfig) -> pl.DataFrame:
    """Every line :func:`simulate_history` would write, in order, without writing files.

    Columns: ``batch`` (number of the file, in write order), ``event_id``, ``object_type``,
    ``object_id``, ``occurred_at`` (UTC datetime), ``malformed`` (the refusal reason, null
    for valid lines), ``duplicate`` (the line repeats one delivered before) and ``line`` (the
    exact bytes, without the newline). For malformed lines ``event_id`` is the id the line
    carries, if any, and the object columns are null.
    """
    frames = []
    for number, batch in enumerate(_plan(config).batches()):
        frame = batch.frame.with_columns(batch=pl.lit(number, dtype=pl.Int64))
        if batch.redelivery_of is not None:
            frame = frame.with_columns(duplicate=pl.lit(True))
        frames.append(frame)
    frame = pl.concat(frames)
    valid = pl.col("reason").is_null()
    lines = frame["line"].cast(pl.Binary)
    marked = frame["line"].str.contains(INVALID_UTF8_MARK, literal=True).fill_null(False)
    if marked.any():
        lines = lines.scatter(
            marked.arg_true(),
            pl.Series(
                [b.replace(_MARK_BYTES, INVALID_UTF8_BYTES) for b in lines.filter(marked)],
                dtype=pl.Binary,
            ),
        )
    return frame.select(
        "batch",
        "event_id",
        object_type=pl.when(valid).then("object_type"),
        object_id=pl.when(valid).then("object_id"),
        occurred_at=pl.when(valid).then(
            pl.col("occurred_at").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
        ),
        malformed="reason",
        duplicate="duplicate",
        line=lines,
    )


def batch_bytes(frame: pl.DataFrame) -> bytes:
    """A batch file's content: one line per row of ``frame["line"]``."""
    if frame.height == 0:
        return b""
    data = (frame["line"].str.join("\n").item() + "\n").encode()
    if _MARK_BYTES in data:
        data = data.replace(_MARK_BYTES, INVALID_UTF8_BYTES)
    return data


def _plan(config: SimulationConfig) -> DeliveryPlan:
    return plan_delivery(config, build_world(config).event_sets)


class _Counts:
    def __init__(self) -> None:
        self.batches = 0
        self.lines = 0
        self.events: Counter[str] = Counter()
        self.redelivered_batches = 0
        self.redelivered_lines = 0

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.lines += batch.frame.height
        if batch.redelivery_of is not None:
            self.redelivered_batches += 1
            self.redelivered_lines += batch.frame.height
            return
        fresh = batch.frame.filter(pl.col("reason").is_null(), ~pl.col("duplicate"))
        for object_type, count in fresh["object_type"].value_counts().iter_rows():
            self.events[object_type] += count

    def summary(
        self, plan: DeliveryPlan, seconds: float, paths: tuple[Path, ...]
    ) -> SimulationSummary:
        return SimulationSummary(
            batches=self.batches,
            lines=self.lines,
            events=sum(self.events.values()),
            events_by_type=dict(sorted(self.events.items())),
            malformed=sum(plan.reason_counts.values()),
            malformed_by_reason=dict(plan.reason_counts),
            duplicate_events=plan.duplicate_events,
            redelivered_batches=self.redelivered_batches,
            redelivered_lines=self.redelivered_lines,
            seconds=round(seconds, 3),
            paths=paths,
        )
