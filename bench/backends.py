"""Cost curve of the two state backends: ingestion and the current-state build on the embedded
DuckDB file and on DuckLake with a PostgreSQL catalog.

    REVORCH_BENCH_POSTGRES_DSN="host=127.0.0.1 port=5432 user=postgres dbname=postgres" \\
        .venv/bin/python bench/backends.py --sizes 100000 1000000

For each size the simulator writes its default history (seed 42) into a fresh landing zone;
then each backend, each step in its own process (peak memory is that step's alone), ingests
it all (`ingest_pending`, one transaction) and builds the current-state tables
(`refresh_current_state`). DuckLake gets a fresh catalog database per size and its data files
in the work folder. Prints one Markdown table; bench/README.md keeps the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import _peak_mb, _simulate, machine  # noqa: E402


def _step(backend: str, kind: str, workdir: Path, catalog: str) -> dict:
    from resources.state_store import StateStore
    from revorch.ingestion.change_log import ingest_pending
    from revorch.ingestion.current_state import refresh_current_state
    from revorch.landing import LandingZone

    if backend == "duckdb":
        store = StateStore(database=str(workdir / "revorch.duckdb"))
    else:
        store = StateStore(
            database=":memory:",
            backend="ducklake",
            catalog_dsn=catalog,
            data_path=str(workdir / "lake"),
        )
    with store.get_connection() as conn:
        start = time.perf_counter()
        if kind == "ingest":
            count = ingest_pending(conn, LandingZone(workdir / "landing")).loaded
        else:
            count = sum(refresh_current_state(conn).values())
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": count, "peak_mb": _peak_mb()}


def _measure(backend: str, kind: str, workdir: Path, catalog: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--step", backend, kind, str(workdir), catalog],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _new_catalog(dsn: str) -> str:
    import psycopg2

    name = f"revorch_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    admin.close()
    return " ".join([p for p in dsn.split() if not p.startswith("dbname=")] + [f"dbname={name}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--step", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        backend, kind, workdir, catalog = args.step
        print(json.dumps(_step(backend, kind, Path(workdir), catalog)))
        return
    dsn = os.environ["REVORCH_BENCH_POSTGRES_DSN"]
    print(f"Machine: {machine()}\n")
    print(
        "| contacts | events | backend | ingest s | ingest s per 1M events | ingest peak MB "
        "| state s | state peak MB |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for contacts in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"revorch-backends-{contacts}-"))
        try:
            events, _ = _simulate(contacts, workdir)
            pristine = workdir / "landing-copy"
            shutil.copytree(workdir / "landing", pristine)
            for backend in ("duckdb", "ducklake"):
                shutil.rmtree(workdir / "landing")
                shutil.copytree(pristine, workdir / "landing")
                catalog = _new_catalog(dsn) if backend == "ducklake" else ""
                ingest = _measure(backend, "ingest", workdir, catalog)
                state = _measure(backend, "state", workdir, catalog)
                assert ingest["rows"] == events, (backend, events, ingest)
                print(
                    f"| {contacts:,} | {events:,} | {backend} | {ingest['seconds']:.1f} "
                    f"| {ingest['seconds'] / events * 1e6:.1f} | {ingest['peak_mb']:,.0f} "
                    f"| {state['seconds']:.1f} | {state['peak_mb']:,.0f} |",
                    flush=True,
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
