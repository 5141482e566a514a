"""Versioned prompts: ``<agent>.<version>.md`` holds the agent's instructions; ``_rules.md``
the rules every prompt ends with. A prompt file is never edited once used: add a version."""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).parent


def system_prompt(agent: str, version: str) -> str:
    path = FOLDER / f"{agent}.{version}.md"
    if not path.exists():
        raise FileNotFoundError(f"no prompt {path.name} for agent {agent} version {version}")
    return path.read_text().strip() + "\n\n" + (FOLDER / "_rules.md").read_text().strip()


def messages(agent: str, version: str, record: dict) -> list[dict]:
    """The chat messages for one record: instructions, then the record as delimited data."""
    data = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    # Record text cannot close the delimiter: < and > stay escaped (still the same JSON).
    data = data.replace("<", "\\u003c").replace(">", "\\u003e")
    return [
        {"role": "system", "content": system_prompt(agent, version)},
        {"role": "user", "content": f"<record>\n{data}\n</record>"},
    ]
