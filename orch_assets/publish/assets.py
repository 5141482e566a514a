"""Publish the state store so analysts can query it while pipelines write.

DuckDB lets one process write a file, and while it writes no other process may open it. So
analysts never open the working file: at the end of each run the writer checkpoints it and
copies it to the published path, replacing the old copy with an atomic rename. A reader that
has the old copy open keeps reading it; the next connection sees the new one.
"""

import os
import shutil
from pathlib import Path

import dagster as dg

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL
from resources import StateStore
from revorch import settings
from revorch.state.backend import lake_snapshot

PUBLISHED = dg.AssetKey(["analytics", "published_state"])


def publish_copy(state_store: StateStore, target: Path) -> int:
    """Copy the checkpointed state store to ``target`` atomically; return its size in bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with state_store.get_connection() as conn:
        conn.execute("CHECKPOINT")
        # Copy while this process still holds the write lock, so no run changes it meanwhile.
        shutil.copyfile(state_store.database, partial)
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target.stat().st_size


def published_state_asset(deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        key=PUBLISHED,
        deps=deps,
        group_name="analytics",
        kinds={"duckdb"},
        pool=DUCKDB_WRITER_POOL,
        automation_condition=dg.AutomationCondition.eager(),
    )
    def published_state(context: dg.AssetExecutionContext, state_store: StateStore):
        """Read-only copy of the whole state store for analysts, replaced atomically."""
        if state_store.is_lake:
            # On DuckLake analysts read the catalog itself; record the snapshot this run
            # ended at, for as-of queries (`AT (VERSION => ...)`, docs/deployment.md).
            with state_store.get_connection() as conn:
                snapshot = lake_snapshot(conn)
            context.log.info(f"DuckLake: analysts read the catalog live (snapshot {snapshot})")
            return dg.MaterializeResult(metadata={"ducklake_snapshot": snapshot})
        target = settings.published_path()
        size = publish_copy(state_store, target)
        context.log.info(f"published {size:,} bytes to {target}")
        return dg.MaterializeResult(metadata={"path": str(target), "bytes": size})

    return published_state
