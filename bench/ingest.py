"""Ingestion benchmark: simulated CRMs of several sizes, ingested, against DuckDB's floor.

    .venv/bin/python bench/ingest.py                  # 10k, 100k and 1M contacts
    .venv/bin/python bench/ingest.py --sizes 10000    # a quick run

For each size it writes the simulated history into a fresh landing zone, then, each in its
own process so that peak memory is that step's alone:

- floor:  DuckDB alone reads every batch and parses every line into a table with the
          landing format's columns (no validation, no dedup, no history);
- ingest: Revorch's ingestion (validate, dedup, quarantine, append to the change log);
- state:  Revorch's build of the current-state tables from the change log.

It prints one Markdown table; bench/README.md keeps the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLOOR_SQL = """
CREATE TABLE events AS
SELECT * FROM read_ndjson(?, columns = {
    'event_id': 'VARCHAR', 'object_type': 'VARCHAR', 'object_id': 'VARCHAR',
    'op': 'VARCHAR', 'occurred_at': 'TIMESTAMPTZ', 'properties': 'JSON'})
"""


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step(kind: str, workdir: Path) -> dict:
    """Run one measured step in this process and return its figures."""
    import duckdb

    from revorch.ingestion.change_log import ingest_pending
    from revorch.ingestion.current_state import refresh_current_state
    from revorch.landing import LandingZone
    from revorch.state.migrate import migrate

    zone = LandingZone(workdir / "landing")
    if kind == "floor":
        files = [str(p) for p in zone.pending()]
        conn = duckdb.connect(str(workdir / "floor.duckdb"))
        conn.execute("SET TimeZone = 'UTC'")
        start = time.perf_counter()
        conn.execute(FLOOR_SQL, [files])
        seconds = time.perf_counter() - start
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return {"seconds": seconds, "events": events, "peak_mb": _peak_mb()}

    conn = duckdb.connect(str(workdir / "revorch.duckdb"))
    conn.execute("SET TimeZone = 'UTC'")
    migrate(conn)
    if kind == "ingest":
        start = time.perf_counter()
        result = ingest_pending(conn, zone)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "events": result.received, "peak_mb": _peak_mb()}
    start = time.perf_counter()
    rebuilt = refresh_current_state(conn)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "events": sum(rebuilt.values()), "peak_mb": _peak_mb()}


def _measure(kind: str, workdir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--step", kind, str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _simulate(contacts: int, workdir: Path) -> tuple[int, float]:
    from revorch.landing import LandingZone
    from revorch.simulator import SimulationConfig, simulate_history

    start = time.perf_counter()
    summary = simulate_history(
        LandingZone(workdir / "landing").ensure(), SimulationConfig(contacts=contacts)
    )
    return summary.events, time.perf_counter() - start


def machine() -> str:
    import duckdb

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, "
        f"Python {platform.python_version()}, DuckDB {duckdb.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--step", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(_step(args.step[0], Path(args.step[1]))))
        return

    print(f"Machine: {machine()}\n")
    print(
        "| contacts | events | simulate s | floor s | ingest s | ingest events/s "
        "| ingest / floor | state s | ingest+state / floor | peak MB floor / ingest / state |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for contacts in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"revorch-bench-{contacts}-"))
        try:
            events, simulate_s = _simulate(contacts, workdir)
            floor = _measure("floor", workdir)
            ingest = _measure("ingest", workdir)
            state = _measure("state", workdir)
            assert ingest["events"] == floor["events"] == events, (events, floor, ingest)
            print(
                f"| {contacts:,} | {events:,} | {simulate_s:.1f} | {floor['seconds']:.2f} "
                f"| {ingest['seconds']:.2f} | {events / ingest['seconds']:,.0f} "
                f"| {ingest['seconds'] / floor['seconds']:.2f}x | {state['seconds']:.2f} "
                f"| {(ingest['seconds'] + state['seconds']) / floor['seconds']:.2f}x "
                f"| {floor['peak_mb']:,.0f} / {ingest['peak_mb']:,.0f} / {state['peak_mb']:,.0f} |",
                flush=True,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
