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
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


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
    """A JSON-lines file a person can read: one line per action sent, each action once."""

    name = "outbox"

    def __init__(self, path: Path, batch_size: int = 500) -> None:
        # One write and one fsync per group: a local file needs no request per action.
        self.path, self.batch_size = path, batch_size
        self._held: set[str] | None = None

    def repair(self) -> list[dict]:
        """Move a torn last line (a crash during an append) to a side file, so the file is
        whole JSON lines again; the side file keeps the bytes for a person to look at.
        Called at the start of every dispatch; the file is read afresh after it."""
        self._held = None
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
        held = self._ids()
        new = [m for m in messages if m["action_id"] not in held]
        text = "".join(json.dumps(m, sort_keys=True, default=str) + "\n" for m in new)
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:  # a full or read-only disk may heal; a torn tail is repaired
            self._held = None
            failed = Delivery(ok=False, retryable=True, detail=f"cannot append: {error}")
            return [failed for _ in messages]
        fresh = {m["action_id"] for m in new}
        held.update(fresh)
        appended, found = (
            Delivery(ok=True, detail=str(self.path)),
            Delivery(ok=True, detail=f"already in {self.path}"),
        )
        return [appended if m["action_id"] in fresh else found for m in messages]

    def _ids(self) -> set[str]:
        """The action ids the file holds, read once; this dispatcher is its only writer."""
        if self._held is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.repair()  # the dispatcher repairs first; this only guards other callers
            self._held = set()
            if self.path.exists():
                with open(self.path, encoding="utf-8") as handle:
                    for line in handle:
                        try:
                            self._held.add(json.loads(line)["action_id"])
                        except (ValueError, KeyError, TypeError):
                            continue  # not an action line; it cannot hide an action either
        return self._held


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
