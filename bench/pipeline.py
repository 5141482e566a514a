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
log(CPU ratio) / log(size ratio): 1 is linear. Prints Markdown rows as they finish, each
followed by its longest steps (wall and CPU seconds, peak memory: the child's /proc sampled
every 0.5 s, matched to the steps' start and end in the run's Dagster event log).
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
import threading
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


class Sampler(threading.Thread):
    """The child's CPU seconds and resident memory every half second, read from /proc.

    A `revorch ingest` runs its steps one after another in its own process, so these samples
    matched to each step's start and end (the run's Dagster event log: ``steps``) give each
    step's CPU seconds (to a sample, 0.5 s) and its peak memory.
    """

    TICK = os.sysconf("SC_CLK_TCK")
    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopped = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            try:
                fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return
            cpu = (int(fields[11]) + int(fields[12])) / self.TICK  # utime + stime
            if fields[0] != "Z":
                self.samples.append((time.time(), cpu, int(fields[21]) * self.PAGE / 2**20))


def steps(dagster_home: Path, samples: list[tuple[float, float, float]]) -> list[dict]:
    """Each step of the latest run in ``dagster_home``: wall s, CPU s and peak MB (samples)."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_step_stats(run.run_id)
    figures = []
    for step in sorted(stats, key=lambda s: s.start_time or 0):
        if step.start_time is None or step.end_time is None:
            continue
        inside = [s for s in samples if step.start_time <= s[0] <= step.end_time]
        before = [s[1] for s in samples if s[0] <= step.start_time] or [0.0]
        until = [s[1] for s in samples if s[0] <= step.end_time] or [0.0]
        figures.append(
            {
                "step": step.step_key,
                "wall_s": step.end_time - step.start_time,
                "cpu_s": until[-1] - before[-1],
                "peak_mb": max((s[2] for s in inside), default=None),
            }
        )
    return figures


def print_steps(figures: list[dict], top: int = 12) -> None:
    """The steps that took longest, as a Markdown table inside an HTML comment."""
    print("<!-- steps (longest first): step | wall s | CPU s (0.5 s samples) | peak MB")
    for step in sorted(figures, key=lambda s: -s["wall_s"])[:top]:
        peak = "-" if step["peak_mb"] is None else f"{step['peak_mb']:,.0f}"
        print(f"| {step['step']} | {step['wall_s']:.1f} | {step['cpu_s']:.1f} | {peak} |")
    peak = max(figures, key=lambda s: s["peak_mb"] or 0, default=None)
    if peak:
        print(f"peak set by {peak['step']}: {peak['peak_mb']:,.0f} MB -->", flush=True)


def measured(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command`` as a child; its CPU seconds, wall seconds and peak memory (MB), and
    ``samples`` of its CPU and memory over time (``Sampler``)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        sampler = Sampler(child.pid)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        sampler.stopped.set()
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
        "samples": sampler.samples,
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
        step_figures = steps(home / "dagster", figures["samples"])
        figures = {k: v for k, v in figures.items() if k not in ("output", "samples")}
        record = {"contacts": contacts, "case": case, "events": events, "floor_cpu_s": floor_cpu}
        rows.append(record | figures | {"steps": step_figures})
        print(
            f"| {contacts:,} | {case} | {events:,} | {figures['cpu_s']:.1f} "
            f"| {figures['wall_s']:.1f} | {figures['peak_mb']:,.0f} "
            f"| {figures['load_before']:.1f} / {figures['load_after']:.1f} "
            f"| {floor_cpu:.2f} | {figures['cpu_s'] / floor_cpu:.0f}x |",
            flush=True,
        )
        print_steps(step_figures)

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
