"""What one slice's read costs in the verdicts, the dispatcher and the agents' memo, against how
many rows the earlier slices left.

A first run at ten million contacts proposes about 8M actions; the verdicts and then the
dispatcher work through them 20,000 at a time (and the lead agent, before them, records about
7M decisions 100,000 ids at a time). Each slice used to read "the next 20,000 after
the last one taken" (``ORDER BY ... LIMIT``), which scans and sorts every action still
waiting: the slices together cost the square of the backlog. They now read their own range,
its bounds found in one pass (revorch/governance/verdicts.py ``BOUNDS_SQL``,
revorch/governance/dispatch.py ``BOUNDS_SQL``), which DuckDB's zone maps find without the rest.
An agent slice's memo lookup (revorch/agents/runtime.py ``_memo``) matched its input hashes
against every decision recorded, so it grew with the slices before it; it now also bounds the
entity ids to the slice's, which the zone maps use the same way. And each verdict and dispatch
slice looks up its actions' holdout arms (revorch/governance/holdouts.py ``ASSIGNED_SQL``),
which matched a string built from every stored assignment's key; it now joins on the key's
columns (still a scan of the assignments per slice: cheaper, not yet independent of them).

    .venv/bin/python bench/slice_queries.py --actions 1000000 4000000

For each size: a migrated state store in a temporary DuckDB file with that many actions (ids
in the order a first run stores them, one ``proposed_at``), then the CPU seconds (the process's,
DuckDB's threads included) of one slice's read at the start, middle and end of the backlog,
before (the queries of session 29, kept here) and now, the median of three reads; and the
one-pass bounds query once. For the memo, a store with that many lead decisions recorded in id
order (as a first run's slices record them) and the lookup of one slice of 70,000 inputs (the
open leads among 100,000 ids) at the start, middle and end, without and with the id range.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from revorch.agents.config import load_agents_config  # noqa: E402
from revorch.agents.runtime import AgentSpec, _memo  # noqa: E402
from revorch.governance import dispatch, holdouts, verdicts  # noqa: E402
from revorch.state.migrate import migrate  # noqa: E402

SLICE = 20_000
MEMO_SLICE = 70_000
NOW = "2026-12-03 00:00:00+00"

VERDICTS_BEFORE = """
SELECT action_id, action_type, source, entity_type, entity_id, company_id,
       CAST(facts AS VARCHAR) AS facts, CAST(payload AS VARCHAR) AS payload
FROM governance.actions
WHERE status = 'proposed' AND action_id > $after
  AND ($only::VARCHAR[] IS NULL OR action_id IN (SELECT unnest($only::VARCHAR[])))
ORDER BY action_id
LIMIT $slice
"""
# Session 29's dispatch query: today's without the slice's upper bound and the zone-map terms.
DISPATCH_BEFORE = "\n".join(
    line
    for line in dispatch.DUE_SQL.splitlines()
    if not any(term in line for term in ("$upto", "$low_id", "$high_id", ">= $after_at"))
)


def _store(path: Path, actions: int, status: str) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(path))
    migrate(conn)
    conn.execute(
        f"""
        INSERT INTO governance.actions BY NAME
        SELECT md5(range::VARCHAR)[:24] AS action_id, 'send_follow_up' AS action_type,
               'lead_qualification' AS source, 'contact' AS entity_type,
               'c-' || range AS entity_id, 'why, at some length: ' || repeat('x', 200) AS reason,
               '{{"subject": "hello"}}'::JSON AS payload, '{{"score": 0.7}}'::JSON AS facts,
               TIMESTAMPTZ '{NOW}' AS proposed_at, '{status}' AS status, 0 AS attempts,
               TIMESTAMPTZ '{NOW}' AS updated_at, 'allow' AS verdict
        FROM range({actions}) ORDER BY action_id
        """
    )
    conn.execute("CHECKPOINT")
    return conn


MEMO_BEFORE = """
SELECT DISTINCT input_hash FROM agents.decisions
WHERE agent = ? AND prompt_version = ? AND model IN (?, ?) AND fallback_reason IS NULL
  AND input_hash IN (SELECT unnest(?))
"""
ASSIGNED_BEFORE = """
SELECT playbook, entity_type, entity_id, arm FROM governance.holdout_assignments
WHERE playbook || '|' || entity_type || '|' || entity_id IN (SELECT unnest($keys))
"""
PLAYBOOK = "lead_qualification/send_follow_up"
LEAD = AgentSpec("lead_qualification", dict, dict, "offline-bench")
LEAD_SETTINGS = load_agents_config().agents[LEAD.name]


def _decisions(path: Path, decisions: int) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(path))
    migrate(conn)
    conn.execute(
        f"""
        INSERT INTO agents.decisions BY NAME
        SELECT md5('d' || range) AS decision_id, 'lead_qualification' AS agent,
               '{LEAD_SETTINGS.prompt_version}' AS prompt_version,
               '{LEAD.offline_version}' AS model,
               sha256('i' || range) AS input_hash,
               'c-' || lpad(range::VARCHAR, 9, '0') AS entity_id, 'offline' AS tier,
               ('{{"id": "c-' || range || '", "x": "' || repeat('x', 600) || '"}}') AS input,
               '{{"score": 0.5}}' AS output, 0 AS prompt_tokens, 0 AS cached_tokens,
               0 AS completion_tokens, 0.0 AS cost_usd, 0.0 AS latency_ms, 0 AS attempts,
               TIMESTAMPTZ '{NOW}' AS decided_at
        FROM range({decisions}) ORDER BY range
        """
    )
    conn.execute("CHECKPOINT")
    return conn


def _memo_cpu(conn, lookup) -> float:
    """Median CPU seconds of three lookups; each must find the whole slice."""
    spent = []
    for _ in range(3):
        start = time.process_time()
        found = lookup()
        spent.append(time.process_time() - start)
        assert len(found) == MEMO_SLICE, len(found)
    return statistics.median(spent)


def measure_memo(decisions: int) -> list[str]:
    settings = LEAD_SETTINGS
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        conn = _decisions(Path(folder) / "decisions.duckdb", decisions)
        last = decisions - MEMO_SLICE
        for where, at in (("start", 0), ("middle", decisions // 2), ("end", last)):
            found = conn.execute(
                "SELECT entity_id, input_hash FROM agents.decisions "
                "WHERE entity_id >= ? ORDER BY entity_id LIMIT ?",
                [f"c-{at:09d}", MEMO_SLICE],
            ).fetchall()
            ids, hashes = [i for i, _ in found], sorted(h for _, h in found)
            params = [
                LEAD.name,
                settings.prompt_version,
                settings.model,
                LEAD.offline_version,
                hashes,
            ]
            before = _memo_cpu(conn, lambda: conn.execute(MEMO_BEFORE, params).fetchall())  # noqa: B023
            now = _memo_cpu(conn, lambda: _memo(conn, LEAD, settings, hashes, ids))  # noqa: B023
            rows.append(f"| {decisions:,} | memo | {where} | {before:.3f} | {now:.3f} | - |")
        conn.close()
    return rows


def measure_holdouts(assignments: int) -> list[str]:
    """One slice's lookup of 20,000 (playbook, entity) pairs, half of them assigned, against
    ``assignments`` stored in the order a first run's slices assign them (not by entity)."""
    with tempfile.TemporaryDirectory() as folder:
        conn = duckdb.connect(str(Path(folder) / "holdouts.duckdb"))
        migrate(conn)
        conn.execute(
            f"""
            INSERT INTO governance.holdout_assignments BY NAME
            SELECT '{PLAYBOOK}' AS playbook, 'contact' AS entity_type,
                   'c-' || lpad(((range * 7919) % {assignments})::VARCHAR, 9, '0') AS entity_id,
                   'treatment' AS arm, true AS randomized, 0.5 AS unit, 0.1 AS share,
                   'v1' AS policy_version, TIMESTAMPTZ '{NOW}' AS exposed_at,
                   md5(range::VARCHAR) AS first_action_id
            FROM range({assignments})
            """
        )
        conn.execute("CHECKPOINT")
        ids = [f"c-{(i * 104729) % (2 * assignments):09d}" for i in range(SLICE)]
        keys = sorted(f"{PLAYBOOK}|contact|{i}" for i in ids)
        wanted = {"playbooks": [PLAYBOOK] * SLICE, "types": ["contact"] * SLICE, "ids": ids}
        spent = {}
        for name, sql, params in (
            ("before", ASSIGNED_BEFORE, {"keys": keys}),
            ("now", holdouts.ASSIGNED_SQL, wanted),
        ):
            runs = []
            for _ in range(3):
                start = time.process_time()
                found = conn.execute(sql, params).fetchall()
                runs.append(time.process_time() - start)
            spent[name] = (statistics.median(runs), len(found))
        conn.close()
    assert spent["before"][1] == spent["now"][1] > 0, spent
    before, now = spent["before"][0], spent["now"][0]
    return [f"| {assignments:,} | holdout arms | any | {before:.3f} | {now:.3f} | - |"]


def _cpu(conn, sql: str, params: dict) -> float:
    """Median CPU seconds of three reads; each must return a whole slice."""
    spent = []
    for _ in range(3):
        start = time.process_time()
        rows = conn.execute(sql, params).fetchall()
        spent.append(time.process_time() - start)
        assert len(rows) == SLICE, len(rows)
    return statistics.median(spent)


def _row(actions: int, step: str, where: str, before: float, now: float, bounds: float) -> str:
    return f"| {actions:,} | {step} | {where} | {before:.3f} | {now:.3f} | {bounds:.2f} |"


def measure(actions: int) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        conn = _store(Path(folder) / "proposed.duckdb", actions, "proposed")
        start = time.process_time()
        found = conn.execute(verdicts.BOUNDS_SQL, {"only": None, "slice": SLICE}).fetchall()
        bounds = [bound for (bound,) in found]
        bounds_cpu = time.process_time() - start
        for where, at in (("start", 0), ("middle", len(bounds) // 2), ("end", len(bounds) - 2)):
            after = bounds[at - 1] if at else ""
            common = {"after": after, "only": None, "slice": SLICE}
            before = _cpu(conn, VERDICTS_BEFORE, common)
            now = _cpu(conn, verdicts.PROPOSED_SQL, common | {"upto": bounds[at]})
            rows.append(_row(actions, "verdicts", where, before, now, bounds_cpu))
        conn.close()

        conn = _store(Path(folder) / "ready.duckdb", actions, "ready")
        due = {"journal": "j", "now": NOW, "slice": SLICE}
        start = time.process_time()
        bounds = [tuple(b) for b in conn.execute(dispatch.BOUNDS_SQL, due).fetchall()]
        bounds_cpu = time.process_time() - start
        for where, at in (("start", 0), ("middle", len(bounds) // 2), ("end", len(bounds) - 2)):
            after = bounds[at - 1] if at else None
            upto = bounds[at]
            same = after is not None and after[0] == upto[0]
            common = due | {
                "after_at": after[0] if after else None,
                "after_id": after[1] if after else None,
            }
            before = _cpu(conn, DISPATCH_BEFORE, common)
            now = _cpu(
                conn,
                dispatch.DUE_SQL,
                common
                | {
                    "upto_at": upto[0],
                    "upto_id": upto[1],
                    "low_id": after[1] if same else None,
                    "high_id": upto[1] if same else None,
                },
            )
            rows.append(_row(actions, "dispatch", where, before, now, bounds_cpu))
        conn.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, nargs="*", default=[1_000_000, 4_000_000])
    parser.add_argument(
        "--decisions", type=int, nargs="*", default=[1_000_000, 4_000_000], help="for the memo"
    )
    parser.add_argument(
        "--assignments",
        type=int,
        nargs="*",
        default=[1_000_000, 7_000_000],
        help="for the holdout arms",
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print()
    print("| rows | step | slice | before: CPU s | now: CPU s | bounds, once: CPU s |")
    print("|---:|---|---|---:|---:|---:|")
    for actions in args.actions:
        for row in measure(actions):
            print(row, flush=True)
    for decisions in args.decisions:
        for row in measure_memo(decisions):
            print(row, flush=True)
    for assignments in args.assignments:
        for row in measure_holdouts(assignments):
            print(row, flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
