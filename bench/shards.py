"""What cutting a first run into pieces costs beyond doing it in one: the contact lifecycle
(the state machines) folded in shards, and the lead agent's inputs staged in passes.

At ten million contacts the state machines fold ten shards of a million contacts
(revorch/lifecycle/runner.py ``SHARD_ENTITIES``) and the lead agent stages its inputs in ten
passes of a million ids (revorch/agents/registry.py ``STAGE_SLICES``). Each shard and each
pass used to query the whole store again, so the pieces cost pieces x store. This bench cuts
a store that ``revorch ingest`` built into the same number of pieces a ten-times larger store
would get, and measures it beside the same work in one piece (the floor):

    REVORCH_HOME=/path/to/home .venv/bin/python bench/shards.py --pieces 10

- lifecycle: ``refresh_contact_lifecycle(full_rebuild=True)`` on a copy of the DuckDB file
  whose contact stage rows were deleted first (a first run's shape), in one shard and in
  ``--pieces`` shards (the embedded file only: it writes);
- lead inputs: every open lead read through ``slice_reader`` in slices of a hundredth of the
  ids (as at 10M: 100 slices of 100,000), in one pass and in ``--pieces`` passes, with the
  time of the staging itself. On the file or, with REVORCH_STATE_BACKEND=ducklake and its
  settings in the environment, on DuckLake (it only reads the store).

CPU seconds are this process's (user + system, DuckDB's threads included); each case runs
``--repeat`` times, alternating. Prints Markdown rows.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from ingest import machine  # noqa: E402
from resources.state_store import StateStore  # noqa: E402
from revorch.agents import registry  # noqa: E402
from revorch.agents.config import load_agents_config  # noqa: E402
from revorch.lifecycle.config import load_lifecycle_config  # noqa: E402
from revorch.lifecycle.runner import refresh_contact_lifecycle  # noqa: E402

LEADS = "lead_qualification"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _store(database: str | None = None) -> StateStore:
    if os.environ.get("REVORCH_STATE_BACKEND") == "ducklake" and database is None:
        return StateStore(
            database=":memory:",
            backend="ducklake",
            catalog_dsn=os.environ["REVORCH_DUCKLAKE_CATALOG"],
            data_path=os.environ["REVORCH_DUCKLAKE_DATA"],
        )
    home = Path(os.environ["REVORCH_HOME"])
    return StateStore(database=database or str(home / "revorch.duckdb"))


def lifecycle(shards: int, scratch: Path) -> dict:
    copy = scratch / "lifecycle.duckdb"
    shutil.copyfile(Path(os.environ["REVORCH_HOME"]) / "revorch.duckdb", copy)
    with _store(str(copy)).get_connection() as conn:
        for table in ("entity_stages", "stage_transitions", "forbidden_transitions"):
            conn.execute(f"DELETE FROM stages.{table} WHERE entity_type = 'contact'")
        conn.execute("CHECKPOINT")
        contacts = conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
        cpu, wall = _cpu(), time.monotonic()
        refreshed = refresh_contact_lifecycle(
            conn, load_lifecycle_config(), full_rebuild=True, shard_entities=-(-contacts // shards)
        )
        figures = {"cpu_s": _cpu() - cpu, "wall_s": time.monotonic() - wall}
    copy.unlink()
    return figures | {"rows": refreshed.transitions}


def lead_inputs(passes: int) -> dict:
    models = load_agents_config().models
    stage, staging = registry.STAGES[LEADS], [0.0]

    def timed(*args, **kwargs):
        before = _cpu()
        try:
            return stage(*args, **kwargs)
        finally:
            staging[0] += _cpu() - before

    with _store().get_connection() as conn:
        ids = registry.id_slices(conn, LEADS, None, 10**12)[0]
        slices = registry.id_slices(conn, LEADS, None, -(-len(ids) // 100))
        registry.STAGES[LEADS], registry.STAGE_SLICES = timed, -(-len(slices) // passes)
        try:
            cpu, wall, rows = _cpu(), time.monotonic(), 0
            with registry.slice_reader(
                conn, LEADS, load_lifecycle_config(), models, None, slices
            ) as read:
                for some in slices:
                    rows += len(read(conn, some))
            figures = {"cpu_s": _cpu() - cpu, "wall_s": time.monotonic() - wall}
        finally:
            registry.STAGES[LEADS] = stage
    return figures | {"rows": rows, "staging_cpu_s": staging[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=["lifecycle", "lead_inputs"])
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the one piece (it may not fit at 10M)"
    )
    args = parser.parse_args()
    lake = os.environ.get("REVORCH_STATE_BACKEND") == "ducklake"
    print(f"<!-- {machine()}; {'DuckLake' if lake else 'the embedded file'} -->")
    print("| step | pieces | rows | CPU s | wall s | staging CPU s | load before / after |")
    print("|---|---:|---:|---:|---:|---:|---|")
    cases = [("lead_inputs", lead_inputs)]
    if not lake:
        cases.insert(0, ("lifecycle", lifecycle))
    with tempfile.TemporaryDirectory(dir=os.environ.get("REVORCH_HOME")) as scratch:
        for name, measure in cases:
            if args.only and name != args.only:
                continue
            for _ in range(args.repeat):
                for pieces in (args.pieces,) if args.no_floor else (1, args.pieces):
                    load = os.getloadavg()[0]
                    if name == "lifecycle":
                        figures = measure(pieces, Path(scratch))
                    else:
                        figures = measure(pieces)
                    staging = figures.get("staging_cpu_s")
                    print(
                        f"| {name} | {pieces} | {figures['rows']:,} | {figures['cpu_s']:.1f} "
                        f"| {figures['wall_s']:.1f} "
                        f"| {'' if staging is None else f'{staging:.1f}'} "
                        f"| {load:.1f} / {os.getloadavg()[0]:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
