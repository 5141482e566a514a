"""The landing zone: a folder where every source drops CRM change batches.

One format for every source (simulator, webhooks, CRM pollers, importers): a batch is a
file of newline-delimited JSON, one change event per line (see docs/landing_zone.md).

Layout under the zone's root:

    .tmp/        batches being written; readers never look here
    incoming/    complete batches waiting to be ingested
    archive/     batches already ingested, kept as the raw record

A batch is published by an atomic rename from ``.tmp/`` into ``incoming/``, so a reader
sees either the whole batch or nothing of it.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

BATCH_SUFFIX = ".ndjson"
_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class LandingZone:
    """Writes batches atomically and lists the ones waiting to be ingested."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"
        self.incoming_dir = self.root / "incoming"
        self.archive_dir = self.root / "archive"

    def ensure(self) -> LandingZone:
        for folder in (self.tmp_dir, self.incoming_dir, self.archive_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def new_batch_id(self, source: str) -> str:
        """A batch id that sorts by creation time: ``<source>-<UTC timestamp>-<random>``."""
        check_source_name(source)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{source}-{stamp}-{uuid.uuid4().hex[:8]}"

    @contextmanager
    def open_batch(self, source: str, batch_id: str | None = None) -> Iterator[Path]:
        """Yield a temporary path to write one batch to; publish it atomically on success.

        If the block raises, the partial file is removed and nothing is published.
        """
        self.ensure()
        batch_id = batch_id or self.new_batch_id(source)
        final = self.incoming_dir / f"{batch_id}{BATCH_SUFFIX}"
        tmp = self.tmp_dir / f"{batch_id}{BATCH_SUFFIX}.part"
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.incoming_dir)

    def write_lines(
        self, source: str, lines: Iterable[str | bytes], batch_id: str | None = None
    ) -> Path:
        """Publish raw lines (already serialised events, malformed ones included) as a batch."""
        with self.open_batch(source, batch_id) as tmp, open(tmp, "wb") as out:
            for line in lines:
                data = line.encode() if isinstance(line, str) else line
                out.write(data.rstrip(b"\n") + b"\n")
        return self.incoming_dir / f"{tmp.name.removesuffix('.part')}"

    def write_events(
        self, source: str, events: Iterable[dict], batch_id: str | None = None
    ) -> Path:
        """Publish change events (dicts in the landing format) as one batch."""
        return self.write_lines(
            source, (json.dumps(event, separators=(",", ":")) for event in events), batch_id
        )

    def pending(self) -> list[Path]:
        """Complete batches waiting in ``incoming/``, oldest batch id first."""
        if not self.incoming_dir.exists():
            return []
        return sorted(self.incoming_dir.glob(f"*{BATCH_SUFFIX}"))

    def archive(self, batch: Path) -> Path:
        """Move an ingested batch out of ``incoming/`` (kept, never deleted)."""
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        target = self.archive_dir / batch.name
        if target.exists():
            # A re-delivered batch with a name already archived: keep both copies.
            target = self.archive_dir / f"{batch.stem}.{uuid.uuid4().hex[:8]}{BATCH_SUFFIX}"
        os.replace(batch, target)
        return target


def check_source_name(source: str) -> str:
    """The source name, if a batch id can carry it; ValueError saying what is allowed if not."""
    if not _SOURCE_NAME.match(source):
        raise ValueError(
            f"source name {source!r} must be lower-case letters, digits or '_' "
            "(at most 32 characters, starting with a letter)"
        )
    return source


@contextmanager
def durable_file(path: Path) -> Iterator[IO[str]]:
    """Write a small file (a cursor, a report) whole or not at all: to a temporary name,
    fsync'd, renamed over ``path``, and the rename made durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def batch_id_of(path: Path) -> str:
    return path.name.removesuffix(BATCH_SUFFIX)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
