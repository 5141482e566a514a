"""Stage recomputation benchmark: full rebuild against an incremental batch of changes.

    .venv/bin/python bench/stages.py                  # 10k, 100k and 1M contacts
    .venv/bin/python bench/stages.py --sizes 10000    # a quick run

For each size: simulate a history that ends today, ingest it and build the CRM state (not
timed), then, each in its own process so peak memory is that step's alone:

- full:        rebuild the CRM state tables and every stage and handoff from the change log;
- incremental: land a live batch of 1,000 changes, ingest it, refresh the CRM state and every
               stage and handoff (only what the changes touch is recomputed).

It prints one Markdown table; bench/README.md keeps the measured ones.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import machine  # noqa: E402

CHANGES = 1_000


def _config(contacts: int):
    from revorch.simulator import SimulationConfig

    return SimulationConfig(contacts=contacts, end=datetime.now(UTC).date().isoformat())


def _step(kind: str, workdir: Path, contacts: int) -> dict:
    import duckdb

    from revorch.definitions import THROUGH_HANDOFFS, materialize
    from revorch.landing import LandingZone
    from revorch.simulator import simulate_history, stream_live

    zone = LandingZone(workdir / "landing").ensure()
    database = workdir / "revorch.duckdb"
    if kind == "live_batch":  # not timed: only writes the batch of changes
        [path] = stream_live(
            zone, _config(contacts), events_per_batch=CHANGES, interval_seconds=0, max_batches=1
        )
        return {"lines": sum(1 for _ in path.open())}

    # Through the asset graph, as a run does (Dagster's own cost per step included).
    start = time.perf_counter()
    if kind == "load":  # not in the table: the first load is bench/ingest.py's subject
        summary = simulate_history(zone, _config(contacts))
        materialize(THROUGH_HANDOFFS, database=database, landing=zone.root)
        return {"events": summary.events, "seconds": time.perf_counter() - start}
    # full: rebuild from the whole change log; incremental: ingest the batch, recompute what
    # it touched.
    materialize(THROUGH_HANDOFFS, database=database, landing=zone.root, full_rebuild=kind == "full")
    seconds = time.perf_counter() - start
    with duckdb.connect(str(database), read_only=True) as conn:
        touched = conn.execute(
            "SELECT count(*) FROM stages.entity_stages WHERE entity_type = 'contact'"
        ).fetchone()[0]
    return {
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "contacts_in_stages": touched,
    }


def _measure(kind: str, workdir: Path, contacts: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--step", kind, str(workdir), str(contacts)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--step", nargs=3, metavar=("KIND", "DIR", "CONTACTS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.step:
        kind, workdir, contacts = args.step
        print(json.dumps(_step(kind, Path(workdir), int(contacts))))
        return

    print(f"Machine: {machine()}\n")
    print(
        "| contacts | events | full rebuild s | full peak MB "
        f"| incremental ({CHANGES:,} changes) s | incremental peak MB | incremental / full |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for contacts in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"revorch-stages-{contacts}-"))
        try:
            loaded = _measure("load", workdir, contacts)
            full = _measure("full", workdir, contacts)
            _measure("live_batch", workdir, contacts)
            incremental = _measure("incremental", workdir, contacts)
            print(
                f"| {contacts:,} | {loaded['events']:,} | {full['seconds']:.2f} "
                f"| {full['peak_mb']:,.0f} | {incremental['seconds']:.2f} "
                f"| {incremental['peak_mb']:,.0f} "
                f"| {incremental['seconds'] / full['seconds']:.3f} |",
                flush=True,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
