"""Audit-chain check: the whole chain against the incremental check from the last verified anchor.

    .venv/bin/python bench/audit_chain.py                    # a 1,000,000-row chain
    .venv/bin/python bench/audit_chain.py --rows 200000 --added 4000

Builds a fresh state store (the migrations) and appends ``--rows`` audit rows (verdicts and
dispatches, as a first run writes them) with ``audited``, anchored like every write. Then:
the full verification (``revorch audit verify``), which records the verified anchor; a run's
worth of new rows (``--added``: about four per changed contact); the check as each run makes
it (incremental, from the verified anchor); and the full verification again, then once more
as one query over the whole chain (how it was verified before session 34), to show what the
ranges save. CPU seconds are the process's (DuckDB's threads included); the best of
``--tries``. Peak MB is the process's peak resident memory so far: the one-query verification
runs last, so the rows before it show the ranges' peak.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import duckdb  # noqa: E402

from ingest import machine  # noqa: E402
from revorch.governance.audit import (  # noqa: E402
    ROWS_PER_RANGE,
    AuditEvent,
    audited,
    read_checkpoint,
    verify,
    write_checkpoint,
)
from revorch.state.migrate import migrate  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def grow(conn: duckdb.DuckDBPyConnection, anchor: Path, rows: int, start: int) -> None:
    """Append ``rows`` audit rows in commits of 50,000, as the governance steps do."""
    for first in range(start, start + rows, 50_000):
        events = [
            AuditEvent(
                "verdict" if n % 2 else "dispatched",
                "dispatcher",
                {"verdict": "allow", "stage": "dispatch", "rules": ["default"], "attempt": 1},
                action_id=f"act-{n:08d}",
                entity_type="contact",
                entity_id=f"c-{n // 4:07d}",
                company_id=f"co-{n // 40:06d}",
            )
            for n in range(first, min(first + 50_000, start + rows))
        ]
        with audited(conn, run_id="bench", anchor_path=anchor) as trail:
            trail.extend(events)


def peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def timed(tries: int, check) -> tuple[float, float, object]:
    best = None
    for _ in range(tries):
        c, w = cpu(), time.perf_counter()
        result = check()
        figures = (cpu() - c, time.perf_counter() - w)
        best = figures if best is None or figures[0] < best[0] else best
    return (*best, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--added", type=int, default=4_000)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    print(f"Machine: {machine()}; load {os.getloadavg()[0]:.1f}\n")
    workdir = Path(tempfile.mkdtemp(prefix="revorch-audit-"))
    conn = duckdb.connect(str(workdir / "revorch.duckdb"))
    conn.execute("SET TimeZone = 'UTC'")
    migrate(conn)
    anchor = workdir / "anchors.jsonl"
    grow(conn, anchor, args.rows, 0)
    print(f"appended {args.rows:,} rows; peak {peak_mb():,} MB\n")
    print("| chain rows | verification | rows recomputed | CPU s | wall s | peak MB | intact |")
    print("|---|---|---|---|---|---|---|")

    def row(rows: int, label: str, since, per_range: int = ROWS_PER_RANGE) -> None:
        cpu_s, wall_s, report = timed(
            args.tries, lambda: verify(conn, anchor, since=since, rows_per_range=per_range)
        )
        recomputed = report.head_seq - report.verified_from
        print(
            f"| {rows:,} | {label} | {recomputed:,} | {cpu_s:.2f} | {wall_s:.2f} | "
            f"{peak_mb():,} | {report.intact} |",
            flush=True,
        )
        write_checkpoint(anchor, report)

    row(args.rows, "full (`revorch audit verify`)", None)
    grow(conn, anchor, args.added, args.rows)
    total = args.rows + args.added
    row(total, "incremental (the check, from the verified anchor)", read_checkpoint(anchor))
    row(total, "full (`revorch audit verify`)", None)
    row(total, "full, as one query (before session 34)", None, per_range=total)
    load = os.getloadavg()[0]
    print(f"\nload after: {load:.1f}")


if __name__ == "__main__":
    main()
