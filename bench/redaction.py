"""Redaction and the personal-data check on a clean simulated CRM (issue 12, finding 4).

    .venv/bin/python bench/redaction.py                    # 100,000 contacts
    .venv/bin/python bench/redaction.py --contacts 5000    # quick

Builds a simulated CRM (seed 42; its free text holds no personal data but the CRM's own names),
and for every agent takes the inputs the shipped routing rule (config/agents.yaml) sends to
the LLM tier, redacts them as a run does and builds their prompts. Then counts, per agent:

- prompts the check ``prompts_hold_no_personal_data`` would flag (it runs
  ``personal_data_in_record`` on the record each stored prompt carried): must be 0;
- prompts the check before issue 12 flagged (an email or phone pattern anywhere in the prompt
  text): it took ``annual_revenue`` for a phone number;
- what the pattern recognizers find in the inputs' text before redaction, outside the name
  fields (the simulated CRM writes no email, phone, IBAN, ... into free text, so every hit
  there is a false positive of a recognizer: a value redacted for nothing);
- seconds to read the CRM's names, to redact, and to check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import duckdb  # noqa: E402

from agents import refresh  # noqa: E402
from ingest import machine  # noqa: E402
from revorch.agents import prompts, recognizers  # noqa: E402
from revorch.agents.config import load_agents_config  # noqa: E402
from revorch.agents.models import offline_tier  # noqa: E402
from revorch.agents.redact import (  # noqa: E402
    COMPANY_FIELDS,
    NAME_FIELDS,
    known_names,
    personal_data_in_record,
    record_in_prompt,
    redact,
)
from revorch.agents.registry import INPUTS, agent_specs  # noqa: E402
from revorch.landing import LandingZone  # noqa: E402
from revorch.simulator import SimulationConfig, simulate_history  # noqa: E402
from revorch.state.migrate import migrate  # noqa: E402

# The check before issue 12 (revorch/agents/redact.py at 0fa28d7), for comparison.
OLD_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
OLD_PHONE = re.compile(r"(?<![\w-])(?!\d{4}-\d{2}-\d{2})\+?\d[\d ().-]{7,}\d(?![\w-])")


def strings(value: object, key: str | None = None):
    """(key, string) for every string in a record, outside the fields replaced whole."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)
    elif isinstance(value, str) and key not in NAME_FIELDS + COMPANY_FIELDS:
        yield key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="revorch-redaction-"))
    zone = LandingZone(workdir / "landing").ensure()
    conn = duckdb.connect(str(workdir / "revorch.duckdb"))
    conn.execute("SET TimeZone = 'UTC'")
    migrate(conn)
    start = time.perf_counter()
    simulate_history(zone, SimulationConfig(contacts=args.contacts, seed=42))
    refresh(conn, zone)
    print(f"Machine: {machine()}")
    print(f"CRM of {args.contacts:,} contacts built in {time.perf_counter() - start:.0f} s\n")
    config = load_agents_config()
    specs = agent_specs(offline_tier(conn))
    print(
        "| agent | inputs | sent to the LLM | flagged by the check | flagged by the old check "
        "| pattern hits before redaction | names s | redact s | check s |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    totals = Counter()
    for agent, settings in config.agents.items():
        items = INPUTS[agent](conn)
        spec = specs[agent]
        sent_items = [
            i for i in items if settings.llm_when.wants_llm(spec.offline(i).confidence, i)
        ]
        start = time.perf_counter()
        names = known_names(conn, sent_items)
        names_s = time.perf_counter() - start
        start = time.perf_counter()
        stored = [
            json.dumps(prompts.messages(agent, settings.prompt_version, redact(item, known)))
            for item, known in zip(sent_items, names, strict=True)
        ]
        redact_s = time.perf_counter() - start
        start = time.perf_counter()
        flagged = [
            found
            for prompt, known in zip(stored, names, strict=True)
            if (found := personal_data_in_record(record_in_prompt(prompt), known))
        ]
        check_s = time.perf_counter() - start
        old = sum(1 for p in stored if OLD_EMAIL.search(p) or OLD_PHONE.search(p))
        hits = Counter(
            finding.kind
            for item in sent_items
            for _, text in strings(item)
            for finding in recognizers.find(text)
        )
        totals.update(
            {"inputs": len(items), "sent": len(sent_items), "flagged": len(flagged), "old": old}
        )
        print(
            f"| {agent} | {len(items):,} | {len(sent_items):,} | {len(flagged):,} | {old:,} "
            f"| {dict(hits) or 'none'} | {names_s:.1f} | {redact_s:.1f} | {check_s:.1f} |",
            flush=True,
        )
    print(
        f"\nAll agents: {totals['sent']:,} prompts, {totals['flagged']:,} flagged by the check, "
        f"{totals['old']:,} by the old check."
    )


if __name__ == "__main__":
    main()
