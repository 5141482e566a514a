"""Where dispatched actions go: a local outbox file (the default) or a webhook.

Only the dispatcher uses these, one action at a time. Every message carries its
``action_id``, the same on every attempt: the webhook sends it as ``Idempotency-Key`` (a
receiver that has seen it must not act twice) and the outbox file does not append an action
it already holds. So delivering an action again after a crash is harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from filelock import FileLock


@dataclass(frozen=True)
class Delivery:
    ok: bool
    retryable: bool = False
    detail: str = ""


class Target(Protocol):
    name: str
    batch_size: int  # actions per delivery: journaled together, before and after

    def repair(self) -> list[dict]:
        """Put right what a crash left half done; one record per repair."""
        ...

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        """Send the messages; one result each, in order. Sending the same ``action_id``
        again must not act twice."""
        ...


class OutboxFile:
    """A JSON-lines file a person can read: one line per action sent, each action once.

    Which actions the file holds is kept in an index beside it (``<file>.index.sqlite3``:
    the ids and how many bytes of the file they cover), so a delivery looks up its own ids
    instead of reading every line sent before. Lines the index does not cover yet (a crash
    between an append and its index commit) are read from the covered offset on; a file
    replaced or cut short is indexed again from its start."""

    name = "outbox"

    def __init__(self, path: Path, batch_size: int = 500) -> None:
        # One write and one fsync per group: a local file needs no request per action.
        self.path, self.batch_size = path, batch_size
        self.index = path.with_name(f"{path.name}.index.sqlite3")

    def repair(self) -> list[dict]:
        """Move a torn last line (a crash during an append) to a side file, so the file is
        whole JSON lines again; the side file keeps the bytes for a person to look at.
        Called at the start of every dispatch."""
        if not self.path.exists():
            return []
        with open(self.path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return []
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return []
            # Rare (only after a crash mid-append): read the file to find the last newline.
            handle.seek(0)
            keep = handle.read().rfind(b"\n") + 1
            handle.seek(keep)
            torn = handle.read()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            side = self.path.with_name(f"{self.path.name}.torn-{stamp}")
            side.write_bytes(torn)
            _fsync(side)
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        record = {"path": str(self.path), "moved_to": str(side), "bytes": len(torn)}
        return [{"repair": "torn_outbox_line", **record, "kept_bytes": keep}]

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair()  # the dispatcher repairs first; this only guards other callers
        # Look up, append and index as one step: another dispatcher (its own journal) on this
        # file waits, so the bytes the index covers are always lines whose ids it holds.
        with (
            FileLock(f"{self.path}.lock"),
            closing(sqlite3.connect(self.index, isolation_level=None)) as index,
        ):
            index.executescript(INDEX_SCHEMA)
            _catch_up(index, self.path)
            ids = sorted({m["action_id"] for m in messages})
            held = {
                action_id
                for (action_id,) in index.execute(
                    "SELECT action_id FROM held "
                    "WHERE action_id IN (SELECT value FROM json_each(?))",
                    [json.dumps(ids)],
                )
            }
            new = []
            for message in messages:
                if message["action_id"] not in held:
                    held.add(message["action_id"])  # the same action twice: one line
                    new.append(message)
            text = "".join(json.dumps(m, sort_keys=True, default=str) + "\n" for m in new)
            try:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:  # a full or read-only disk may heal; a torn tail is repaired
                failed = Delivery(ok=False, retryable=True, detail=f"cannot append: {error}")
                return [failed for _ in messages]
            fresh = [m["action_id"] for m in new]
            _record(index, self.path, fresh)
        appended, found = (
            Delivery(ok=True, detail=str(self.path)),
            Delivery(ok=True, detail=f"already in {self.path}"),
        )
        fresh_ids = set(fresh)
        return [appended if m["action_id"] in fresh_ids else found for m in messages]


# The outbox's index: the ids its lines hold, and the file (inode, bytes) they were read from.
INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (action_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS covered (inode INTEGER NOT NULL, bytes INTEGER NOT NULL);
"""


def _catch_up(index: sqlite3.Connection, path: Path) -> None:
    """Index the lines appended after the covered bytes; all of them if the file is not the
    one indexed (another inode, or shorter than what was covered)."""
    size, inode = (path.stat().st_size, path.stat().st_ino) if path.exists() else (0, 0)
    covered = index.execute("SELECT inode, bytes FROM covered").fetchone()
    same = covered is not None and covered[0] == inode and covered[1] <= size
    start = covered[1] if same else 0
    if same and start == size:
        return
    with _transaction(index):
        if not same:
            index.execute("DELETE FROM held")
        ids: list[tuple[str]] = []
        if size > start:
            with open(path, "rb") as handle:
                handle.seek(start)
                ids = [(i,) for i in map(_action_id, handle) if i is not None]
        index.executemany("INSERT OR IGNORE INTO held VALUES (?)", ids)
        _cover(index, inode, size)


# Lines are written with sorted keys, so ``action_id`` comes first: read without parsing the
# whole line when its value has no escape; any other line is parsed.
_FIRST_ACTION_ID = re.compile(rb'\{"action_id": "([^"\\]*)"')


def _action_id(line: bytes) -> str | None:
    found = _FIRST_ACTION_ID.match(line)
    if found:
        return found.group(1).decode()
    try:
        return json.loads(line)["action_id"]
    except (ValueError, KeyError, TypeError):
        return None  # not an action line; it cannot hide an action either


def _record(index: sqlite3.Connection, path: Path, ids: list[str]) -> None:
    """Add the ids just appended (and fsynced) and the bytes they bring the index up to."""
    stat = path.stat()
    with _transaction(index):
        index.executemany("INSERT OR IGNORE INTO held VALUES (?)", [(i,) for i in ids])
        _cover(index, stat.st_ino, stat.st_size)


def _cover(index: sqlite3.Connection, inode: int, size: int) -> None:
    index.execute("DELETE FROM covered")
    index.execute("INSERT INTO covered VALUES (?, ?)", [inode, size])


@contextmanager
def _transaction(index: sqlite3.Connection) -> Iterator[None]:
    index.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        index.execute("ROLLBACK")
        raise
    index.execute("COMMIT")


class Webhook:
    """POSTs each action as JSON, signed with HMAC-SHA256 when a secret is set
    (``X-Revorch-Signature: sha256=<hex of HMAC(secret, body)>``)."""

    name = "webhook"
    batch_size = 1  # one request per action, each journaled before and after

    def __init__(self, url: str, secret: str | None = None, timeout_seconds: float = 10) -> None:
        self.url, self.secret, self.timeout = url, secret, timeout_seconds

    def repair(self) -> list[dict]:
        return []  # nothing local to repair; the receiver de-duplicates by Idempotency-Key

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        return [self._post(message) for message in messages]

    def _post(self, message: dict) -> Delivery:
        body = json.dumps(message, sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": message["action_id"]}
        if self.secret:
            digest = hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Revorch-Signature"] = f"sha256={digest}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Delivery(ok=True, detail=f"HTTP {response.status}")
        except urllib.error.HTTPError as error:
            # Client errors will not heal by themselves, except a timeout or a rate limit.
            retryable = error.code >= 500 or error.code in (408, 429)
            return Delivery(ok=False, retryable=retryable, detail=f"HTTP {error.code}")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            return Delivery(ok=False, retryable=True, detail=f"unreachable: {error}")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
