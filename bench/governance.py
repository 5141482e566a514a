"""Governance benchmark: what the outbox, the policy, the dispatcher and the audit trail cost.

    .venv/bin/python bench/governance.py                      # 10,000 and 100,000 contacts
    .venv/bin/python bench/governance.py --contacts 20000

For each size: builds a simulated CRM (seed 42), runs every agent on the offline tier, then
times, on the first run (the whole backlog of recommendations at once):
propose -> judge -> dispatch to the outbox file -> verify the whole audit chain. Then it runs
the same steps again with nothing changed (the steady state of a run without news). Prints a
Markdown table with the machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import dagster as dg  # noqa: E402
import duckdb  # noqa: E402

from ingest import machine  # noqa: E402
from orch_assets.agents.backtest import MODEL_BACKTEST  # noqa: E402
from resources.agents import LlmResource  # noqa: E402
from revorch.definitions import THROUGH_HANDOFFS, materialize  # noqa: E402
from revorch.governance.actions import propose  # noqa: E402
from revorch.governance.audit import verify  # noqa: E402
from revorch.governance.dispatch import dispatch  # noqa: E402
from revorch.governance.policy import load_policy  # noqa: E402
from revorch.governance.targets import OutboxFile  # noqa: E402
from revorch.governance.verdicts import judge_proposed  # noqa: E402
from revorch.landing import LandingZone  # noqa: E402
from revorch.simulator import SimulationConfig, simulate_history  # noqa: E402


def decided_crm(contacts: int, workdir: Path) -> duckdb.DuckDBPyConnection:
    """A simulated CRM through the asset graph up to the agents (offline tier: no model)."""
    zone = LandingZone(workdir / "landing").ensure()
    database = workdir / "revorch.duckdb"
    simulate_history(zone, SimulationConfig(contacts=contacts, seed=42))
    materialize(
        # Not the daily model backtest: it refits every model and its baselines.
        (THROUGH_HANDOFFS | dg.AssetSelection.groups("agents"))
        - dg.AssetSelection.assets(MODEL_BACKTEST),
        database=database,
        landing=zone.root,
        resources={"llm": LlmResource()},
    )
    conn = duckdb.connect(str(database))
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def governed_run(conn, workdir: Path, run_id: str) -> dict[str, float]:
    policy, anchor = load_policy(), workdir / "anchors.jsonl"
    outbox = OutboxFile(workdir / "outbox.jsonl")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    timings["proposed"] = propose(conn, run_id=run_id, anchor_path=anchor)
    timings["propose s"] = time.perf_counter() - start
    start = time.perf_counter()
    judge_proposed(conn, policy, run_id=run_id, anchor_path=anchor)
    timings["judge s"] = time.perf_counter() - start
    start = time.perf_counter()
    journal = workdir / "dispatch-journal.sqlite3"
    connect = partial(nullcontext, conn)
    report = dispatch(
        connect, policy, outbox, journal_path=journal, run_id=run_id, anchor_path=anchor
    )
    timings["sent"] = report.outcomes["sent"]
    timings["dispatch s"] = time.perf_counter() - start
    start = time.perf_counter()
    checked = verify(conn, anchor)
    assert checked.intact, checked.problems
    timings["audit rows"] = checked.rows
    timings["verify s"] = time.perf_counter() - start
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    info = machine()
    print(f"Machine: {info}\n")
    columns = ["proposed", "propose s", "judge s", "sent", "dispatch s", "audit rows", "verify s"]
    print("| contacts | run | " + " | ".join(columns) + " | peak MB |")
    print("|---" * (len(columns) + 3) + "|")
    for contacts in args.contacts:
        workdir = Path(tempfile.mkdtemp(prefix="revorch-governance-"))
        conn = decided_crm(contacts, workdir)
        for label in ("first (backlog)", "second (no change)"):
            timings = governed_run(conn, workdir, label)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cells = [
                f"{timings[c]:,.2f}" if c.endswith(" s") else f"{int(timings[c]):,}"
                for c in columns
            ]
            print(f"| {contacts:,} | {label} | " + " | ".join(cells) + f" | {peak:,.0f} |")
        conn.close()


if __name__ == "__main__":
    main()
