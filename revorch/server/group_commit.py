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

    def __init__(self, zone: LandingZone, source: str = "webhook", writers: int = 2) -> None:
        self.zone = zone
        self.source = source
        self.writers = writers
        self.batches_written = 0
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await asyncio.to_thread(self.zone.ensure)
        self._tasks = [
            asyncio.create_task(self._run(), name=f"landing-writer-{n}")
            for n in range(self.writers)
        ]

    async def stop(self) -> None:
        """Write what is still waiting, then stop."""
        self._stopping = True
        self._wake.set()
        await asyncio.gather(*self._tasks)

    async def land(self, lines: list[bytes]) -> str:
        """Return the id of the batch holding ``lines`` once it is durable in ``incoming/``."""
        if self._stopping or not self._tasks:
            raise RuntimeError("the landing writer is not running")
        waiting = _Waiting(lines)
        self._queue.append(waiting)
        self._wake.set()
        # Shielded: a client that hangs up does not take its lines out of a batch being written.
        return await asyncio.shield(waiting.landed)

    async def _run(self) -> None:
        while True:
            while not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
            group, self._queue = self._queue, []
            await self._write(group)

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
