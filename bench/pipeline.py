"""Whole-pipeline benchmark: `revorch ingest` on simulated CRMs, first run and incremental run.

    .venv/bin/python bench/pipeline.py                         # 10k, 100k and 1M contacts
    .venv/bin/python bench/pipeline.py --sizes 10000 100000    # without the long 1M first run
    .venv/bin/python bench/pipeline.py --sizes 1000000 --json out.jsonl   # one size, rows kept
    .venv/bin/python bench/pipeline.py --sizes 1000000 --keep              # keep its home, then
    .venv/bin/python bench/pipeline.py --from /tmp/revorch-pipeline-1000000-xyz   # incremental

For each size, in a fresh REVORCH_HOME (its own Dagster instance, the LLM tier off):

- simulate: `revorch simulate --contacts N` (seed 42), not part of the pipeline's figures;
- floor: DuckDB alone reads every waiting batch into a table with the landing format's columns
  (bench/ingest.py's FLOOR_SQL), in its own process; its CPU seconds are the query's own;
- first run: `revorch ingest` (every asset, check, agent and governance step of revorch_main);
- incremental: 1,000 contacts changed (a new job title each, one landed batch), then
  `revorch ingest` again; `--incremental-runs` times, each with 1,000 other contacts.

``--from HOME`` measures incremental runs only, on a copy of a home an earlier ``--keep`` left
(its size is read from it): one untimed `revorch ingest` first, so the code under test applies
its migrations and fills what it keeps, then the incremental runs as above.

Each `revorch ingest` is a child process: CPU seconds (user + system, DuckDB's threads
included) and peak resident memory come from that child's own rusage (os.wait4); the load
average is read before and after. The growth exponent between two sizes is
log(CPU ratio) / log(size ratio): 1 is linear. Prints Markdown rows as they finish.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from ingest import FLOOR_SQL, machine  # noqa: E402

REVORCH = Path(sys.executable).parent / "revorch"
CHANGED = 1_000


def environment(home: Path) -> dict[str, str]:
    """The environment of every child: its own REVORCH_HOME and Dagster instance, offline."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REVORCH_", "DAGSTER_")) and key != "OPENAI_API_KEY"
    }
    return env | {"REVORCH_HOME": str(home), "CI": "true"}


def measured(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` as a child; its CPU seconds, wall seconds and peak memory (MB)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        output.seek(0)
        text = output.read().decode(errors="replace")
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {child.returncode}:\n{text[-4000:]}")
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "peak_mb": usage.ru_maxrss / 1024,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "output": text,
    }


def floor_step(files: list[str]) -> dict:
    """DuckDB alone reading ``files`` (in this process): CPU and wall seconds of the query."""
    import duckdb

    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'UTC'")
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    conn.execute(FLOOR_SQL, [files])
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"cpu_s": cpu, "wall_s": wall, "events": events}


def floor(home: Path) -> dict:
    files = sorted(str(path) for path in (home / "landing" / "incoming").glob("*.ndjson"))
    out = subprocess.run(
        [sys.executable, __file__, "--floor", *files], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def change_contacts(home: Path, round_: int) -> None:
    """Land one batch changing the job title of 1,000 contacts (other ones each round)."""
    import duckdb

    from revorch.landing import LandingZone

    with duckdb.connect(str(home / "revorch.duckdb"), read_only=True) as conn:
        contacts = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM contacts ORDER BY hash(id, ?) LIMIT ?",
                [round_, CHANGED],
            ).fetchall()
        ]
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    LandingZone(home / "landing").write_events(
        "bench",
        (
            {
                "event_id": f"bench-pipeline-{round_}-{contact}",
                "object_type": "contact",
                "object_id": contact,
                "occurred_at": at,
                "properties": {"job_title": f"Head of Revenue Operations {round_}"},
            }
            for contact in contacts
        ),
    )


def exponent(small: tuple[int, float], large: tuple[int, float]) -> float:
    return math.log(large[1] / small[1]) / math.log(large[0] / small[0])


def run_size(
    contacts: int, incremental_runs: int, keep: bool, source: Path | None = None
) -> list[dict]:
    home = Path(tempfile.mkdtemp(prefix=f"revorch-pipeline-{contacts}-"))
    env = environment(home)
    # Rounds already landed in a copied home would be duplicates (same event ids): go on after.
    first_round = 1 + len(list((source or home).glob("landing/*/bench-*")))
    rows = []

    def row(case: str, figures: dict, floor_cpu: float, events: int) -> None:
        figures = {key: value for key, value in figures.items() if key != "output"}
        record = {"contacts": contacts, "case": case, "events": events, "floor_cpu_s": floor_cpu}
        rows.append(record | figures)
        print(
            f"| {contacts:,} | {case} | {events:,} | {figures['cpu_s']:.1f} "
            f"| {figures['wall_s']:.1f} | {figures['peak_mb']:,.0f} "
            f"| {figures['load_before']:.1f} / {figures['load_after']:.1f} "
            f"| {floor_cpu:.2f} | {figures['cpu_s'] / floor_cpu:.0f}x |",
            flush=True,
        )

    try:
        if source:
            shutil.copytree(source, home, dirs_exist_ok=True)
            settled = measured([str(REVORCH), "ingest"], env)
            print(f"<!-- copied {source}; untimed settling run: {settled['cpu_s']:.1f} CPU s -->")
        else:
            simulate = [str(REVORCH), "simulate", "--contacts", str(contacts)]
            simulated = measured(simulate, env)
            took = f"{simulated['wall_s']:.0f} s wall, {simulated['cpu_s']:.0f} s CPU"
            print(f"<!-- {contacts:,} contacts simulated in {took} -->", flush=True)
            bottom = floor(home)
            first = measured([str(REVORCH), "ingest"], env)
            row("first run", first, bottom["cpu_s"], bottom["events"])
        for round_ in range(first_round, first_round + incremental_runs):
            change_contacts(home, round_)
            bottom = floor(home)
            figures = measured([str(REVORCH), "ingest"], env)
            row(f"incremental ({CHANGED:,} contacts changed)", figures, bottom["cpu_s"], CHANGED)
    finally:
        if keep:
            print(f"<!-- kept {home} -->", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--incremental-runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="append every row as a JSON line here")
    parser.add_argument("--keep", action="store_true", help="keep each size's REVORCH_HOME")
    parser.add_argument(
        "--from", dest="source", type=Path, help="incremental runs on a copy of this kept home"
    )
    parser.add_argument("--floor", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor is not None:
        print(json.dumps(floor_step(args.floor)))
        return

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"Machine: {machine()}; uptime before: {uptime}\n")
    print("| contacts | run | events | CPU s | wall s | peak MB | load before / after "
          "| floor CPU s | CPU / floor |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---|---:|---:|")
    results: list[dict] = []
    if args.source:
        import duckdb

        with duckdb.connect(str(args.source / "revorch.duckdb"), read_only=True) as conn:
            args.sizes = [conn.execute("SELECT count(*) FROM contacts").fetchone()[0]]
    for contacts in args.sizes:
        rows = run_size(contacts, args.incremental_runs, args.keep, args.source)
        results += rows
        if args.json:
            with args.json.open("a") as out:
                out.writelines(json.dumps(record) + "\n" for record in rows)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nuptime after: {uptime}")
    first = sorted((r["contacts"], r["cpu_s"]) for r in results if r["case"] == "first run")
    for small, large in itertools.pairwise(first):
        print(f"first run CPU exponent {small[0]:,} -> {large[0]:,}: {exponent(small, large):.2f}")


if __name__ == "__main__":
    main()
