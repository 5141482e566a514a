"""A source's durable cursor: a small JSON file replaced atomically.

A source lands a batch first and saves its cursor after: a crash between the two re-reads
the batch, whose events carry the same ids and are duplicates, never a loss.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from revorch.landing import durable_file


class CursorFile:
    """JSON state kept in ``path``; ``save`` writes a temporary file, fsyncs it and renames it
    over the old one, so a crash leaves the old cursor or the new one, never half of one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())

    def save(self, state: dict[str, Any]) -> None:
        with durable_file(self.path) as out:
            json.dump(state, out, indent=1, sort_keys=True)
