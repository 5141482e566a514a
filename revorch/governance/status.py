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
    "attempts": pl.Int32,
    "next_attempt_at": pl.Datetime("us", "UTC"),
    "last_error": pl.String,
    "sent_at": pl.Datetime("us", "UTC"),
    "resolution": pl.String,
}


def update_actions(conn: duckdb.DuckDBPyConnection, updates: list[dict]) -> None:
    """Few UPDATEs for many actions, one per set of columns named (a step names the same
    columns for most of its actions): a column an update does not name keeps its value."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for update in updates:
        named = tuple(column for column in COLUMNS if column in update)
        groups.setdefault(named, []).append(update)
    for named, group in groups.items():
        frame = pl.DataFrame(
            {
                "action_id": [u["action_id"] for u in group],
                **{column: [u[column] for u in group] for column in named},
            },
            schema={"action_id": pl.String, **{column: COLUMNS[column] for column in named}},
        )
        assignments = "".join(f"{column} = u.{column}, " for column in named)
        conn.register("action_updates", frame)
        conn.execute(
            f"UPDATE governance.actions AS a SET {assignments}updated_at = now() "
            "FROM action_updates AS u WHERE a.action_id = u.action_id"
        )
        conn.unregister("action_updates")
