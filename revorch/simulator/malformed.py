"""Malformed lines: every way a line can be refused (docs/landing_zone.md, "What is refused").

A malformed line is made from the valid line it replaces, so it looks like real traffic. Its
event id gets an ``x`` (``sim-42-x0000000123``), or is removed, so it never collides with a
valid event. Every malformed line is unique, so quarantine keeps each one.
"""

from __future__ import annotations

import numpy as np
import polars as pl

REASONS = (
    "invalid_json",
    "not_an_object",
    "missing_event_id",
    "missing_object_id",
    "unknown_object_type",
    "invalid_op",
    "invalid_occurred_at",
    "occurred_at_out_of_range",
    "wrong_type",
    "oversized",
    "invalid_utf8",
)
OVERSIZED = REASONS.index("oversized")
MAX_OVERSIZED = 3
OVERSIZED_BYTES = 300 * 1024
# Stands for the invalid bytes in a polars (UTF-8) string; swapped for b"\xff\xfe" on output.
# A private-use pair, which the simulator's ASCII vocabulary never produces.
INVALID_UTF8_MARK = "\ue000\ue001"
INVALID_UTF8_BYTES = b"\xff\xfe"

# A known property of each object type, with a value of the wrong type or an impossible date.
WRONG_TYPE_PROPERTIES = {
    "owner": '{"created_at":"2026-13-45T25:00:00Z"}',
    "company": '{"employees":"lots"}',
    "contact": '{"created_at":"2026-02-30T10:00:00Z"}',
    "deal": '{"close_date":"2026-13-45"}',
    "activity": '{"activity_at":"not a time"}',
    "ticket": '{"csat":"five"}',
    "subscription": '{"seats":"many"}',
}


def schedule(rng: np.random.Generator, count: int) -> np.ndarray:
    """Reason codes for ``count`` malformed lines, cycling through every reason.

    Oversized lines are costly (256 KiB each), so at most ``MAX_OVERSIZED`` are made.
    """
    oversized = min(MAX_OVERSIZED, count // len(REASONS))
    others = np.array([i for i in range(len(REASONS)) if i != OVERSIZED])
    codes = np.concatenate(
        [np.resize(others, count - oversized), np.full(oversized, OVERSIZED)]
    ).astype(np.int64)
    return rng.permutation(codes)


def corrupt(frame: pl.DataFrame, event_prefix: str) -> pl.DataFrame:
    """Rewrite ``line`` of the rows with a ``reason`` to the malformed form of that reason.

    Expects columns ``line``, ``reason`` (null for valid rows), ``object_type`` and ``seq``;
    the ``event_id`` column is updated to the id the malformed line carries (or null).
    """
    bad = frame.filter(pl.col("reason").is_not_null())
    if bad.height == 0:
        return frame
    good = frame.filter(pl.col("reason").is_null())
    renamed = pl.col("line").str.replace(
        f'"event_id":"{event_prefix}', f'"event_id":"{event_prefix}x', literal=True
    )
    head = renamed.str.replace(r',"op":"[a-z]+".*$', "")
    reason = pl.col("reason")
    wrong = pl.col("object_type").replace_strict(WRONG_TYPE_PROPERTIES)
    out_of_range = (
        pl.when(pl.col("seq") % 2 == 0)
        .then(pl.lit('"occurred_at":"1899-12-31T23:59:59Z"'))
        .otherwise(pl.lit('"occurred_at":"2199-01-01T00:00:00Z"'))
    )
    line = (
        pl.when(reason == "invalid_json")
        .then(renamed.str.head((renamed.str.len_chars() * 0.6).cast(pl.Int64)))
        .when(reason == "not_an_object")
        .then(pl.concat_str(pl.lit("["), renamed, pl.lit("]")))
        .when(reason == "missing_event_id")
        .then(pl.col("line").str.replace(r'^\{"event_id":"[^"]*",', "{"))
        .when(reason == "missing_object_id")
        .then(renamed.str.replace(r',"object_id":"[^"]*"', ""))
        .when(reason == "unknown_object_type")
        .then(renamed.str.replace(r'"object_type":"[a-z]+"', '"object_type":"widget"'))
        .when(reason == "invalid_op")
        .then(renamed.str.replace(r'"op":"[a-z]+"', '"op":"merge"'))
        .when(reason == "invalid_occurred_at")
        .then(renamed.str.replace(r'"occurred_at":"[^"]*"', '"occurred_at":"2026-02-30T10:00:00Z"'))
        .when(reason == "occurred_at_out_of_range")
        .then(renamed.str.replace(r'"occurred_at":"[^"]*"', out_of_range))
        .when(reason == "wrong_type")
        .then(pl.concat_str(head, pl.lit(',"op":"upsert","properties":'), wrong, pl.lit("}")))
        .when(reason == "invalid_utf8")
        .then(
            pl.concat_str(
                head, pl.lit(f',"op":"upsert","properties":{{"note":"caf{INVALID_UTF8_MARK}"}}}}')
            )
        )
        .otherwise(head)  # oversized: padded below, on its few rows only
    )
    event_id = (
        pl.when(reason == "missing_event_id")
        .then(pl.lit(None, dtype=pl.String))
        .otherwise(pl.col("event_id").str.replace(event_prefix, f"{event_prefix}x", literal=True))
    )
    bad = bad.with_columns(line=line, event_id=event_id)
    padding = "lorem ipsum dolor sit amet " * (OVERSIZED_BYTES // 27 + 1)
    big = bad.filter(reason == "oversized").with_columns(
        line=pl.col("line") + f',"op":"upsert","properties":{{"body":"{padding}"}}}}'
    )
    return pl.concat([good, bad.filter(reason != "oversized"), big])
