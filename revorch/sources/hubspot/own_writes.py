"""What Revorch itself wrote to HubSpot: the write-back records each write here, the poller
and the webhook receiver read it so a write never comes back in as a change.

One row per write: the record, the instant HubSpot stamped on it (its ``updatedAt``), the
action and the properties written with their values. The poller leaves out of a record's
snapshot, and the webhook receiver out of a property change, every property that still holds
the value Revorch last wrote to it (:func:`still_ours`): that value is Revorch's own, not news
from the CRM. A person who changes it makes it news again.

A small SQLite file (WAL, ``synchronous=FULL``) shared by the dispatcher (writer), the poller
and the webhook receiver (readers), in different processes. A reader keeps one connection per
thread: the receiver reads on every HubSpot request, and opening the file each time halved
its rate (bench/README.md). In WAL mode each read sees the writes committed before it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (
    object_type TEXT NOT NULL,     -- HubSpot's: contacts, companies, deals, tasks
    object_id   TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,  -- the record's last-modified instant after the write
    action_id   TEXT NOT NULL,
    properties  TEXT NOT NULL,     -- JSON object of the properties written
    PRIMARY KEY (object_type, object_id, modified_ms, action_id)
);
CREATE INDEX IF NOT EXISTS writes_by_action ON writes (action_id);
"""


class OwnWrites:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._readers = threading.local()  # this thread's (connection, file's inode)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        return conn

    def record(
        self, object_type: str, object_id: str, modified_ms: int, action_id: str, properties: dict
    ) -> None:
        with closing(self._connect()) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO writes VALUES (?, ?, ?, ?, ?)",
                (object_type, object_id, modified_ms, action_id, json.dumps(properties)),
            )

    def done(self, action_id: str) -> list[tuple[str, str]]:
        """The records an action already wrote (object type, id); empty if none."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT object_type, object_id FROM writes WHERE action_id = ?", (action_id,)
            ).fetchall()
        return [(t, i) for t, i in rows]

    def written(self, object_type: str, ids: list[str]) -> dict[str, dict[str, object]]:
        """For each record id: the value Revorch last wrote to each property, if any."""
        conn = self._reader() if ids else None
        if conn is None:
            return {}
        found: dict[str, dict[str, object]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                "SELECT object_id, properties FROM writes "
                f"WHERE object_type = ? AND object_id IN ({marks}) ORDER BY modified_ms",
                (object_type, *chunk),
            ).fetchall()
            for object_id, props in rows:
                found.setdefault(object_id, {}).update(json.loads(props))
        return found

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's connection for reads, opened once; None while there is no ledger (no
        write-back yet); opened again if the file was replaced (the state folder reset)."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return None
        cached = getattr(self._readers, "conn", None)
        if cached is None or cached[1] != inode:
            if cached is not None:
                cached[0].close()
            self._readers.conn = (self._connect(), inode)
        return self._readers.conn[0]


def still_ours(properties: dict, written: dict[str, object]) -> frozenset[str]:
    """The properties that still hold the value Revorch wrote (HubSpot answers in text)."""
    return frozenset(
        name
        for name, value in written.items()
        if name in properties and str(properties[name]) == str(value)
    )
