"""Does one long transaction of inserts hold its rows past DuckDB's memory_limit?

Inserts ``--slices`` slices of 20,000 rows (about 1 KB each, from polars, as the proposals
write actions) into a table of a fresh database file under ``memory_limit = '1GB'``,
committing every ``--commit-every`` slices (0: once, at the end), and prints the process's
resident memory every 25 slices and its peak.

    .venv/bin/python bench/transaction_memory.py --commit-every 0
    .venv/bin/python bench/transaction_memory.py --commit-every 10
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import duckdb
import polars as pl

ROWS = 20_000


def resident_mb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit-every", type=int, default=0, help="slices per transaction")
    parser.add_argument("--slices", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        conn = duckdb.connect(str(Path(folder) / "memory.duckdb"))
        conn.execute("SET memory_limit = '1GB'")
        conn.execute("CREATE TABLE actions (id BIGINT, payload VARCHAR, facts VARCHAR)")
        conn.execute("BEGIN")
        for piece in range(args.slices):
            ids = range(piece * ROWS, (piece + 1) * ROWS)
            frame = pl.DataFrame(
                {
                    "id": ids,
                    "payload": [f'{{"to": "owner-{i}", "text": "{"x" * 900}{i}"}}' for i in ids],
                    "facts": [f'{{"tier": "offline", "n": {i}}}' for i in ids],
                }
            )
            conn.register("new_rows", frame)
            conn.execute("INSERT INTO actions SELECT * FROM new_rows")
            conn.unregister("new_rows")
            if args.commit_every and (piece + 1) % args.commit_every == 0:
                conn.execute("COMMIT")
                conn.execute("BEGIN")
            if (piece + 1) % 25 == 0:
                print(f"after {piece + 1} slices: {resident_mb():,} MB", flush=True)
        conn.execute("COMMIT")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(f"end: {resident_mb():,} MB, peak {peak:,} MB")


if __name__ == "__main__":
    main()
