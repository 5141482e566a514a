"""Dagster's SQLite event log, with a pool slot claim that two processes cannot both win.

Dagster claims a concurrency-pool slot by selecting a free slot row and then updating that row
by its id (``SqlEventLogStorage._claim_concurrency_slot``). On PostgreSQL the select locks the
row (``FOR UPDATE``); SQLite ignores that, so two processes whose steps were both assigned a
slot can select the same free row and both update it: both claims succeed and two steps of the
``duckdb_writer`` pool (limit 1) run at once. Assigning is not atomic on SQLite either (a slot
freed while another step registers can be assigned twice), which alone only makes a step wait;
the claim is where the limit has to hold. Here it is one UPDATE that takes a slot only if it is
still free, decided by SQLite's write lock.

Selected by the dagster.yaml that `revorch` writes (revorch/instance/__init__.py); an instance
on PostgreSQL (``dagster-postgres``) keeps Dagster's own storage, whose row locks already make
the claim atomic.
"""

from __future__ import annotations

import sqlalchemy as db
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._utils.concurrency import ConcurrencySlotStatus


class AtomicClaimSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` whose slot claim is a single conditional UPDATE."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        # Dagster's builds its own class, whatever the subclass.
        return cls(inst_data=inst_data, **config_value)

    def _claim_concurrency_slot(
        self, concurrency_key: str, run_id: str, step_key: str
    ) -> ConcurrencySlotStatus:
        slots = ConcurrencySlotsTable.c
        free = (
            db.select(slots.id)
            .where(
                slots.concurrency_key == concurrency_key,
                slots.step_key.is_(None),
                slots.deleted == False,  # noqa: E712
            )
            .limit(1)
            .scalar_subquery()
        )
        with self.index_connection() as conn:
            claimed = conn.execute(
                ConcurrencySlotsTable.update()
                .values(run_id=run_id, step_key=step_key)
                .where(slots.id == free, slots.step_key.is_(None))
            ).rowcount
        return ConcurrencySlotStatus.CLAIMED if claimed else ConcurrencySlotStatus.BLOCKED
