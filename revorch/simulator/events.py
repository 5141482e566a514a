"""Event sets and their serialisation into landing-zone lines.

An :class:`EventSet` holds events of one shape: one object type, one operation and the same
set of properties on every row, so each row's ``properties`` contains exactly the fields
that change sets (never a null for an absent field). Serialisation is vectorised with
polars string expressions.

Columns of an event set's frame:

* ``obj``: 0-based index of the object; rendered as its readable id (``c-0000001``).
* ``at``: when the change happened, epoch seconds (UTC).
* every other column is a property, named as the state-store column. Integer columns
  named like a reference (``company_id``, ``renewal_of``, ...) hold object indexes and are
  rendered as ids, ``*_at`` integer columns are epoch seconds rendered as ISO timestamps,
  ``*_date`` integer columns are days since 1970-01-01 rendered as ISO dates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"

# object type -> (id prefix, zero-padded width)
ID_FORMATS: dict[str, tuple[str, int]] = {
    "owner": ("own-", 4),
    "company": ("co-", 6),
    "contact": ("c-", 7),
    "deal": ("d-", 7),
    "activity": ("act-", 8),
    "ticket": ("t-", 7),
    "subscription": ("sub-", 7),
}

# property column -> object type it references
REFERENCE_COLUMNS: dict[str, str] = {
    "owner_id": "owner",
    "company_id": "company",
    "contact_id": "contact",
    "deal_id": "deal",
    "renewal_of": "subscription",
}
TIMESTAMP_COLUMNS = frozenset({"created_at", "closed_at", "activity_at"})
DATE_COLUMNS = frozenset({"start_date", "end_date", "close_date"})


@dataclass(frozen=True)
class EventSet:
    """Events of one shape (see the module docstring for the frame's columns)."""

    name: str
    object_type: str
    frame: pl.DataFrame
    op: str = "upsert"
    # Replaces the object type's id prefix, e.g. for objects created by a live stream run.
    id_prefix: str | None = None

    @property
    def property_names(self) -> list[str]:
        return [c for c in self.frame.columns if c not in ("obj", "at")]

    def object_id(self) -> pl.Expr:
        """Expression rendering the ``obj`` column as the object's id."""
        return render_id(pl.col("obj"), self.object_type, self.id_prefix)


def event_set(
    set_name: str,
    object_type: str,
    obj: np.ndarray,
    at: np.ndarray,
    /,
    op: str = "upsert",
    **props: object,
) -> EventSet:
    """Build an event set from arrays of equal length (``props`` in the order to emit)."""
    columns: dict[str, object] = {
        "obj": np.asarray(obj, dtype=np.int64),
        "at": np.asarray(at, dtype=np.int64),
    }
    columns.update(props)
    return EventSet(set_name, object_type, pl.DataFrame(columns), op)


def render_id(expr: pl.Expr, object_type: str, prefix: str | None = None) -> pl.Expr:
    """Render 0-based object indexes as readable ids (``co-000001``)."""
    default, width = ID_FORMATS[object_type]
    return pl.lit(prefix or default) + (expr + 1).cast(pl.String).str.zfill(width)


def render_timestamp(expr: pl.Expr) -> pl.Expr:
    return pl.from_epoch(expr, time_unit="s").dt.strftime(ISO_SECONDS)


def _property_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if dtype.is_integer():
        if name in REFERENCE_COLUMNS:
            return render_id(col, REFERENCE_COLUMNS[name]).alias(name)
        if name in TIMESTAMP_COLUMNS:
            return render_timestamp(col).alias(name)
        if name in DATE_COLUMNS:
            return col.cast(pl.Int32).cast(pl.Date).dt.strftime("%Y-%m-%d").alias(name)
    return col


def render_lines(events: EventSet, seq: pl.Expr, event_prefix: str) -> pl.Expr:
    """Expression giving each row's JSON line; ``seq`` numbers the events.

    Event ids are ``<event_prefix><seq zero-padded to 10 digits>`` so that, as strings, they
    sort like the numbers (the ingestion breaks occurred_at ties by event id).
    """
    header = f'","object_type":"{events.object_type}","object_id":"'
    parts: list[pl.Expr] = [
        pl.lit('{"event_id":"' + event_prefix),
        seq.cast(pl.String).str.zfill(10),
        pl.lit(header),
        events.object_id(),
        pl.lit('","occurred_at":"'),
        render_timestamp(pl.col("at")),
        pl.lit(f'","op":"{events.op}"'),
    ]
    names = events.property_names
    if names:
        schema = events.frame.schema
        props = pl.struct([_property_expr(n, schema[n]) for n in names]).struct.json_encode()
        parts += [pl.lit(',"properties":'), props]
    parts.append(pl.lit("}"))
    return pl.concat_str(parts)
