"""Moving many actions at once: one UPDATE from a frame of changes."""

from __future__ import annotations

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
    """One UPDATE for many actions: a column an update does not name keeps its value."""
    if not updates:
        return
    frame = pl.DataFrame(
        [{column: u.get(column) for column in ["action_id", *COLUMNS]} for u in updates],
        schema={"action_id": pl.String, **COLUMNS},
    ).with_columns(pl.Series("named", [sorted(u) for u in updates], dtype=pl.List(pl.String)))
    assignments = ",\n".join(
        f"{column} = CASE WHEN list_contains(u.named, '{column}') THEN u.{column} "
        f"ELSE a.{column} END"
        for column in COLUMNS
    )
    conn.register("action_updates", frame)
    conn.execute(
        f"UPDATE governance.actions AS a SET {assignments}, updated_at = now() "
        "FROM action_updates AS u WHERE a.action_id = u.action_id"
    )
    conn.unregister("action_updates")
