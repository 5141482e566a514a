"""Durable landing for many concurrent requests: group commit.

Every accepted request must be on disk before its 2xx. One batch file and one fsync per request
would cap the receiver at the disk's fsync rate, so requests that arrive while a batch is being
written wait together and go into the next batch: one file, one fsync of the file and one of
the folder for the whole group, and each request is answered once its group is durable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from revorch.landing import LandingZone

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    lines: list[bytes]
    landed: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitWriter:
    """Gathers the lines of concurrent requests into landing-zone batches (``source-...``)."""

    def __init__(self, zone: LandingZone, source: str = "webhook") -> None:
        self.zone = zone
        self.source = source
        self.batches_written = 0
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.zone.ensure)
        self._task = asyncio.create_task(self._run(), name="landing-group-commit")

    async def stop(self) -> None:
        """Write what is still waiting, then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def land(self, lines: list[bytes]) -> str:
        """Return the id of the batch holding ``lines`` once it is durable in ``incoming/``."""
        if self._stopping or self._task is None or self._task.done():
            raise RuntimeError("the landing writer is not running")
        waiting = _Waiting(lines)
        self._queue.append(waiting)
        self._wake.set()
        # Shielded: a client that hangs up does not take its lines out of a batch being written.
        return await asyncio.shield(waiting.landed)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            group, self._queue = self._queue, []
            if group:
                await self._write(group)
            elif self._stopping:
                return

    async def _write(self, group: list[_Waiting]) -> None:
        batch_id = self.zone.new_batch_id(self.source)
        lines = [line for waiting in group for line in waiting.lines]
        try:
            await asyncio.to_thread(self.zone.write_lines, self.source, lines, batch_id)
        except Exception as error:  # every waiting request gets a 503 saying why
            log.error("could not land batch %s (%d requests): %s", batch_id, len(group), error)
            for waiting in group:
                waiting.landed.set_exception(error)
            return
        self.batches_written += 1
        for waiting in group:
            waiting.landed.set_result(batch_id)
