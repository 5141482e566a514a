"""Cost curve of the two state backends (the embedded DuckDB file, DuckLake with a PostgreSQL
catalog): ingestion sharded by batch, the current-state build and, optionally, the whole
pipeline (`revorch ingest`), per million contacts.

    REVORCH_BENCH_POSTGRES_DSN="$(.ci/postgres start /tmp/pg-bench/server)" \\
        .venv/bin/python bench/backends.py --sizes 1000000 --pipeline ducklake

For each size `revorch simulate --contacts N` (seed 42; 50,000-event batches) writes one source
home; with `--copies K` it then lands K - 1 more copies of that history whose record and event
ids are made distinct per copy (`"c-0680902"` becomes `"c-30680902"` in copy 3): K x N
contacts without simulating them at once (the simulator holds its world in memory, about 2 GB
per million contacts). Each measurement gets its own copy of the home (hard links: ingestion
only renames batches) and, on DuckLake, a fresh catalog database and data folder. Each
measured step is a child process; its CPU seconds (user + system, DuckDB's threads included)
and peak resident memory come from its own rusage (bench/pipeline.py's `measured`):

- ingest: `ingest_pending` with `max_batches=--shard-batches` again and again until the landing
  zone is empty, one transaction per shard (crm_change_log);
- state: `refresh_current_state` (crm_current_state), one transaction per shard of about
  `--state-shard-changes` changes;
- pipeline (for the backends named by --pipeline): `revorch ingest` on a fresh copy, every
  asset, check, agent and governance step of revorch_main, as bench/pipeline.py's first run,
  followed by every step's wall and CPU seconds and peak memory (bench/pipeline.py's `steps`);
- lake import (--lake-import, after the pipeline on the file): `revorch lake import` of the
  file it wrote into a new lake, the audit chain's check there included.

Store size: the DuckDB file, or DuckLake's data folder plus its catalog database
(pg_database_size). Prints Markdown rows as they finish; bench/README.md keeps the measured ones.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from ingest import machine  # noqa: E402
from pipeline import REVORCH, environment, measured, print_steps, steps  # noqa: E402
from revorch.ingestion.current_state import SHARD_CHANGES  # noqa: E402


def _step(backend: str, kind: str, home: Path, catalog: str, shard: int) -> dict:
    from resources.state_store import StateStore
    from revorch.ingestion.change_log import ingest_pending
    from revorch.ingestion.current_state import refresh_current_state
    from revorch.landing import LandingZone

    if backend == "duckdb":
        store = StateStore(database=str(home / "revorch.duckdb"))
    else:
        store = StateStore(
            database=":memory:",
            backend="ducklake",
            catalog_dsn=catalog,
            data_path=str(home / "lake"),
        )
    rows, shard_cpu = 0, []
    with store.get_connection() as conn:
        if kind == "ingest":
            zone = LandingZone(home / "landing")
            while True:
                before = _cpu()
                result = ingest_pending(conn, zone, max_batches=shard)
                if not result.batches:
                    break
                rows += result.loaded
                shard_cpu.append(round(_cpu() - before, 1))
        else:
            rows = sum(refresh_current_state(conn, shard_changes=shard).values())
    return {"rows": rows, "shards": len(shard_cpu), "shard_cpu_s": shard_cpu}


def _cpu() -> float:
    """This process's CPU seconds so far (user + system, all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _environment(home: Path, backend: str, catalog: str) -> dict[str, str]:
    env = environment(home)
    if backend == "ducklake":
        env |= {
            "REVORCH_STATE_BACKEND": "ducklake",
            "REVORCH_DUCKLAKE_CATALOG": catalog,
            "REVORCH_DUCKLAKE_DATA": str(home / "lake"),
        }
    return env


def _measure_step(backend: str, kind: str, home: Path, catalog: str, shard: int) -> dict:
    command = [sys.executable, __file__, "--step", backend, kind, str(home), catalog, str(shard)]
    figures = measured(command, _environment(home, backend, catalog))
    figures.pop("samples")
    return figures | json.loads(figures.pop("output").strip().splitlines()[-1])


def _admin(dsn: str, sql: str) -> object:
    import psycopg2

    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        cursor = admin.cursor()
        cursor.execute(sql)
        return cursor.fetchone() if cursor.description else None
    finally:
        admin.close()


def _with_dbname(dsn: str, name: str) -> str:
    return " ".join([p for p in dsn.split() if not p.startswith("dbname=")] + [f"dbname={name}"])


def _store_mb(home: Path, backend: str, dsn: str, name: str) -> float:
    if backend == "duckdb":
        files = [home / "revorch.duckdb"]
        catalog = 0
    else:
        files = [p for p in (home / "lake").rglob("*") if p.is_file()]
        catalog = _admin(dsn, f"SELECT pg_database_size('{name}')")[0]
    return (sum(p.stat().st_size for p in files) + catalog) / 2**20


def _copy_home(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=os.link)
    return target


# Every record id in the simulator's events is a JSON string "<prefix>-<digits>".
RECORD_ID = re.compile(rb'"([a-z]+)-([0-9]+)"')


def _land_copies(source: Path, copies: int) -> None:
    """Land ``copies - 1`` more copies of the source's batches, ids distinct per copy."""
    incoming = source / "landing" / "incoming"
    originals = sorted(incoming.glob("*.ndjson"))
    for copy in range(1, copies):
        for path in originals:
            data = path.read_bytes().replace(b'"event_id":"', b'"event_id":"copy%d-' % copy)
            data = RECORD_ID.sub(rb'"\1-%d\2"' % copy, data)
            # "simulator-copy01-..." sorts after every original: each copy lands in order.
            name = path.name.replace("-", f"-copy{copy:02d}-", 1)
            (incoming / f".{name}.part").write_bytes(data)
            (incoming / f".{name}.part").rename(incoming / name)


def _row(contacts: int, events: int, backend: str, what: str, figures: dict, store: float) -> str:
    per = 1e6 / contacts
    return (
        f"| {contacts:,} | {events:,} | {backend} | {what} | {figures['cpu_s']:.1f} "
        f"| {figures['wall_s']:.1f} | {figures['cpu_s'] * per:.1f} | {figures['peak_mb']:,.0f} "
        f"| {store:,.0f} | {figures['load_before']:.1f} / {figures['load_after']:.1f} |"
    )


def _lake_import(home: Path, contacts: int, events: int, dsn: str) -> None:
    """`revorch lake import`: the file the pipeline wrote into a new lake."""
    name = f"revorch_bench_{uuid.uuid4().hex[:8]}"
    _admin(dsn, f"CREATE DATABASE {name}")
    try:
        env = _environment(home, "ducklake", _with_dbname(dsn, name))
        figures = measured([str(REVORCH), "lake", "import"], env)
        assert "audit trail is intact" in figures["output"], figures["output"]
        store = _store_mb(home, "ducklake", dsn, name)
        print(_row(contacts, events, "file to DuckLake", "lake import", figures, store))
        print(f"<!-- {figures['output'].strip().splitlines()[0]} -->", flush=True)
    finally:
        _admin(dsn, f"DROP DATABASE {name}")


def run_size(contacts: int, args: argparse.Namespace, dsn: str) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"revorch-backends-{contacts}-", dir=args.workdir))
    try:
        source = work / "source"
        simulated = measured(
            [str(REVORCH), "simulate", "--contacts", str(contacts)], environment(source)
        )
        events = int(simulated["output"].split("Wrote ")[1].split()[0].replace(",", ""))
        took = f"{simulated['wall_s']:.0f} s wall, {simulated['cpu_s']:.0f} s CPU"
        print(f"<!-- {contacts:,} contacts ({events:,} events) simulated in {took} -->", flush=True)
        if args.copies > 1:
            _land_copies(source, args.copies)
            contacts, events = contacts * args.copies, events * args.copies
            print(f"<!-- landed as {args.copies} copies: {contacts:,} contacts -->", flush=True)
        for backend in args.backends:
            name = f"revorch_bench_{uuid.uuid4().hex[:8]}"
            catalog = _with_dbname(dsn, name) if backend == "ducklake" else ""
            if catalog:
                _admin(dsn, f"CREATE DATABASE {name}")
            home = _copy_home(source, work / backend)
            ingest = _measure_step(backend, "ingest", home, catalog, args.shard_batches)
            assert ingest["rows"] == events, (backend, events, ingest)
            what = f"ingest ({ingest['shards']} shards)"
            print(f"<!-- {backend} CPU s per shard: {ingest['shard_cpu_s']} -->")
            store = _store_mb(home, backend, dsn, name)
            print(_row(contacts, events, backend, what, ingest, store), flush=True)
            state = _measure_step(backend, "state", home, catalog, args.state_shard_changes)
            store = _store_mb(home, backend, dsn, name)
            print(_row(contacts, events, backend, "current state", state, store), flush=True)
            shutil.rmtree(home)
            if catalog:
                _admin(dsn, f"DROP DATABASE {name}")
        for backend in args.pipeline:
            name = f"revorch_bench_{uuid.uuid4().hex[:8]}"
            catalog = _with_dbname(dsn, name) if backend == "ducklake" else ""
            if catalog:
                _admin(dsn, f"CREATE DATABASE {name}")
            home = _copy_home(source, work / f"pipeline-{backend}")
            figures = measured([str(REVORCH), "ingest"], _environment(home, backend, catalog))
            store = _store_mb(home, backend, dsn, name)
            print(_row(contacts, events, backend, "whole pipeline", figures, store), flush=True)
            print_steps(steps(home / "dagster", figures["samples"]), top=40)
            if backend == "duckdb" and args.lake_import:
                _lake_import(home, contacts, events, dsn)
            shutil.rmtree(home)
            if catalog:
                _admin(dsn, f"DROP DATABASE {name}")
    except BaseException:
        if args.keep:
            print(f"<!-- kept {work} for a look -->", flush=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--backends", nargs="*", default=["duckdb", "ducklake"])
    parser.add_argument("--pipeline", nargs="*", default=[], help="backends to run it on")
    parser.add_argument(
        "--shard-batches", type=int, default=20, help="landed batches per ingestion transaction"
    )
    parser.add_argument(
        "--state-shard-changes",
        type=int,
        default=SHARD_CHANGES,
        help="changes per transaction of the current-state build",
    )
    parser.add_argument(
        "--copies", type=int, default=1, help="land the simulated history this many times"
    )
    parser.add_argument(
        "--lake-import",
        action="store_true",
        help="after the pipeline on the file: `revorch lake import` of its file into a new lake",
    )
    parser.add_argument("--workdir", help="where the homes go (default: the temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the homes when a step fails")
    parser.add_argument("--step", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        backend, kind, home, catalog, shard = args.step
        print(json.dumps(_step(backend, kind, Path(home), catalog, int(shard))))
        return
    dsn = os.environ.get("REVORCH_BENCH_POSTGRES_DSN", "")
    if not dsn and ("ducklake" in args.backends + args.pipeline or args.lake_import):
        parser.error("DuckLake needs REVORCH_BENCH_POSTGRES_DSN (a PostgreSQL to make catalogs in)")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"Machine: {machine()}; uptime before: {uptime}\n")
    print(
        "| contacts | events | backend | step | CPU s | wall s | CPU s per 1M contacts "
        "| peak MB | store MB | load before / after |"
    )
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---|")
    for contacts in args.sizes:
        run_size(contacts, args, dsn)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nuptime after: {uptime}")


if __name__ == "__main__":
    main()
