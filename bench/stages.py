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

    from orch_assets.stages.refresh import refresh_all_stages
    from revorch.ingestion.change_log import ingest_pending
    from revorch.ingestion.current_state import refresh_current_state
    from revorch.landing import LandingZone
    from revorch.lifecycle.config import load_lifecycle_config
    from revorch.simulator import simulate_history, stream_live
    from revorch.state.migrate import migrate

    zone = LandingZone(workdir / "landing").ensure()
    config = load_lifecycle_config()
    if kind == "live_batch":  # not timed: only writes the batch of changes
        [path] = stream_live(
            zone, _config(contacts), events_per_batch=CHANGES, interval_seconds=0, max_batches=1
        )
        return {"lines": sum(1 for _ in path.open())}

    conn = duckdb.connect(str(workdir / "revorch.duckdb"))
    conn.execute("SET TimeZone = 'UTC'")
    migrate(conn)
    start = time.perf_counter()
    if kind == "load":  # not in the table: the first load is bench/ingest.py's subject
        summary = simulate_history(zone, _config(contacts))
        ingest_pending(conn, zone)
        refresh_current_state(conn)
        refresh_all_stages(conn, config)
        return {"events": summary.events, "seconds": time.perf_counter() - start}
    if kind == "full":
        refresh_current_state(conn, full_rebuild=True)
        refresh_all_stages(conn, config, full_rebuild=True)
    else:
        ingest_pending(conn, zone)
        refresh_current_state(conn)
        refresh_all_stages(conn, config)
    seconds = time.perf_counter() - start
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
