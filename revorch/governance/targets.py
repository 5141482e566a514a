"""Where dispatched actions go: a local outbox file (the default) or a webhook.

Only the dispatcher uses these. Every message carries its ``action_id``, which is also the
webhook's ``Idempotency-Key``: a receiver that has seen it must not act twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Delivery:
    ok: bool
    retryable: bool = False
    detail: str = ""


class Target(Protocol):
    name: str

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        """Send each message; one result per message, in order."""
        ...

    def delivered(self, action_ids: list[str]) -> set[str]:
        """Which of these actions the target already has (after a crash mid-dispatch)."""
        ...


class OutboxFile:
    """A JSON-lines file a person can read: one line per action sent."""

    name = "outbox"

    def __init__(self, path: Path) -> None:
        self.path = path

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for message in messages:
                handle.write(json.dumps(message, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return [Delivery(ok=True, detail=str(self.path)) for _ in messages]

    def delivered(self, action_ids: list[str]) -> set[str]:
        if not action_ids or not self.path.exists():
            return set()
        wanted, found = set(action_ids), set()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                action_id = json.loads(line).get("action_id")
                if action_id in wanted:
                    found.add(action_id)
        return found


class Webhook:
    """POSTs each action as JSON, signed with HMAC-SHA256 when a secret is set
    (``X-Revorch-Signature: sha256=<hex of HMAC(secret, body)>``)."""

    name = "webhook"

    def __init__(self, url: str, secret: str | None = None, timeout_seconds: float = 10) -> None:
        self.url, self.secret, self.timeout = url, secret, timeout_seconds

    def deliver(self, messages: list[dict]) -> list[Delivery]:
        return [self._post(message) for message in messages]

    def delivered(self, action_ids: list[str]) -> set[str]:
        return set()  # sent again with the same Idempotency-Key; the receiver de-duplicates

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
