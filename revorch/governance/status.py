"""Moving many actions at once: one UPDATE per shape of change, from a frame of changes."""

from __future__ import annotations

from collections import defaultdict

import duckdb
import polars as pl

# The columns a step may change; each update sets the ones it names.
COLUMNS = {
    "status": pl.String,
    "verdict": pl.String,
    "policy_version": pl.String,
    "verdict_rules": pl.List(pl.String),
    "approval_due_at": pl.Datetime("us", "UTC"),
    "target": pl.String,
    "sending_journal": pl.String,
    "attempts": pl.Int32,
    "next_attempt_at": pl.Datetime("us", "UTC"),
    "last_error": pl.String,
    "sent_at": pl.Datetime("us", "UTC"),
    "resolution": pl.String,
}


def update_actions(conn: duckdb.DuckDBPyConnection, updates: list[dict]) -> None:
    """Change many actions: a column an update does not name keeps its value. Updates that
    name the same columns (a dispatch has two or three such shapes) share one UPDATE."""
    shapes: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for update in updates:
        shapes[tuple(sorted(set(update) - {"action_id"}))].append(update)
    for named, group in shapes.items():
        unknown = set(named) - set(COLUMNS)
        if unknown:
            raise ValueError(f"not a column an update may change: {sorted(unknown)}")
        # Built column by column: a frame from many dicts costs far more.
        frame = pl.DataFrame(
            {column: [u[column] for u in group] for column in ("action_id", *named)},
            schema={"action_id": pl.String, **{column: COLUMNS[column] for column in named}},
        )
        assignments = "".join(f"{column} = u.{column}, " for column in named)
        conn.register("action_updates", frame)
        conn.execute(
            f"UPDATE governance.actions AS a SET {assignments}updated_at = now() "
            "FROM action_updates AS u WHERE a.action_id = u.action_id"
        )
        conn.unregister("action_updates")
