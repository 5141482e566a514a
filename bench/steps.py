"""CPU and wall seconds of each step of an incremental run: stages, handoffs, metrics and their
data-quality checks, after a live batch of about 1,000 changes.

    .venv/bin/python bench/steps.py                    # 100k contacts
    .venv/bin/python bench/steps.py --contacts 10000   # quick
    .venv/bin/python bench/steps.py --keep DIR         # build once in DIR, then re-measure there

A fresh store is loaded and built once (not timed), with one untimed incremental run so every
watermark exists; then a live batch of ``--changes`` events lands and one run ingests it and
refreshes the selection below, in this process, through the asset graph. Each step's CPU
seconds are this process's CPU time between the step's start and end events (steps run one at
a time in process), its wall seconds the same span on the wall clock. It prints one Markdown
table; bench/README.md keeps the measured ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import machine  # noqa: E402


def _config(contacts: int):
    from revorch.simulator import SimulationConfig

    return SimulationConfig(contacts=contacts, end=datetime.now(UTC).date().isoformat())


def _selection():
    import dagster as dg

    return dg.AssetSelection.groups(
        "ingestion", "crm_state", "stages", "handoffs", "metrics"
    ) - dg.AssetSelection.assets(["metrics", "playbook_uplift"])


class StepClock:
    """Records this process's CPU time and the wall clock at each step's start and end event."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self._open: dict[str, tuple[float, float]] = {}

    def install(self) -> None:
        import dagster as dg
        from dagster._core.events import DagsterEventType

        original = dg.DagsterInstance.handle_new_event
        clock = self

        def handle_new_event(instance, event, **kwargs):
            dagster_event = event.dagster_event
            if dagster_event is not None and event.step_key:
                kind = dagster_event.event_type
                now = (time.process_time(), time.perf_counter())
                if kind == DagsterEventType.STEP_START:
                    clock._open[event.step_key] = now
                elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                    cpu, wall = clock._open.pop(event.step_key, now)
                    clock.spans[event.step_key][0] += now[0] - cpu
                    clock.spans[event.step_key][1] += now[1] - wall
            return original(instance, event, **kwargs)

        dg.DagsterInstance.handle_new_event = handle_new_event


def run(workdir: Path, contacts: int, changes: int, build: bool) -> None:
    from revorch.definitions import materialize
    from revorch.landing import LandingZone
    from revorch.simulator import simulate_history, stream_live

    zone = LandingZone(workdir / "landing").ensure()
    database = workdir / "revorch.duckdb"
    selection = _selection()
    if build:
        simulate_history(zone, _config(contacts))
        materialize(selection, database=database, landing=zone.root)
        materialize(selection, database=database, landing=zone.root)
    else:  # another build of the code may have left tables to fill once: not timed
        materialize(selection, database=database, landing=zone.root)
    [batch] = stream_live(  # a generator: unpacking it writes the batch
        zone, _config(contacts), events_per_batch=changes, interval_seconds=0, max_batches=1
    )
    lines = sum(1 for _ in batch.open())
    load_before = os.getloadavg()
    clock = StepClock()
    clock.install()
    cpu, wall = time.process_time(), time.perf_counter()
    materialize(selection, database=database, landing=zone.root)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall

    print(f"Machine: {machine()}; load average before: {load_before}\n")
    print(f"{contacts:,} contacts, a live batch of {lines:,} changes\n")
    print("| step | CPU s | wall s |")
    print("|---|---:|---:|")
    for step, (step_cpu, step_wall) in sorted(clock.spans.items(), key=lambda s: -s[1][0]):
        print(f"| {step} | {step_cpu:.2f} | {step_wall:.2f} |")
    steps_cpu = sum(s[0] for s in clock.spans.values())
    steps_wall = sum(s[1] for s in clock.spans.values())
    print(f"| **all steps** | {steps_cpu:.2f} | {steps_wall:.2f} |")
    print(f"| **whole run** (materialize) | {cpu:.2f} | {wall:.2f} |")
    print(f"\nload average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--keep", type=Path, help="build in DIR once and keep it")
    args = parser.parse_args()
    if args.keep:
        build = not (args.keep / "revorch.duckdb").exists()
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args.keep, args.contacts, args.changes, build)
        return
    workdir = Path(tempfile.mkdtemp(prefix=f"revorch-steps-{args.contacts}-"))
    try:
        run(workdir, args.contacts, args.changes, build=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
