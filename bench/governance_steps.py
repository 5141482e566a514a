"""One governance step (or the lead agent) alone on a kept home, in this process: its CPU
seconds, wall seconds and peak resident memory (issue 16).

    REVORCH_HOME=/tmp/home .venv/bin/python bench/governance_steps.py reset
    REVORCH_HOME=/tmp/home .venv/bin/python bench/governance_steps.py propose|judge|dispatch

``reset`` forgets every action, the audit trail, the holdout assignments, the open items, the
proposal watermarks, the anchors, the outbox and the dispatch journal, so the next ``propose``
is a first run's over the agents' decisions already in the store. Run each step in a fresh
process: the peak is the process's own (``ru_maxrss``).

    REVORCH_HOME=/tmp/home .venv/bin/python bench/governance_steps.py lead-reset
    REVORCH_HOME=/tmp/home .venv/bin/python bench/governance_steps.py lead [SLICE_IDS]|lead-whole

``lead-reset`` forgets the lead agent's decisions and watermark, so the next ``lead`` is its
first run, offline: in id slices as the asset runs it (``registry.decide_in_slices``), or
``lead-whole`` in one piece (``inputs_to_decide`` then ``run_agent``, as before the slices)."""

import os
import resource
import sys
import time
from pathlib import Path

from resources import default_resources
from revorch.agents.models import offline_tier
from revorch.agents.registry import SLICE_IDS, agent_specs, decide_in_slices, inputs_to_decide
from revorch.agents.runtime import run_agent
from revorch.governance.actions import propose
from revorch.governance.dispatch import dispatch
from revorch.governance.verdicts import judge_proposed

RESET = [
    "DELETE FROM governance.actions",
    "DELETE FROM governance.audit_log",
    "DELETE FROM governance.holdout_assignments",
    "DELETE FROM governance.open_items",
    "DELETE FROM agents.watermarks WHERE agent LIKE 'proposals/%'",
]


def main(step: str) -> None:
    found = default_resources()
    store, governance, dispatcher = found["state_store"], found["governance"], found["dispatcher"]
    started, wall = time.process_time(), time.monotonic()
    if step == "reset":
        with store.get_connection() as conn:
            for statement in RESET:
                conn.execute(statement)
            conn.execute("CHECKPOINT")
        for path in (governance.anchor, Path(dispatcher.outbox_path), dispatcher.journal):
            for stale in path.parent.glob(f"{path.name}*"):
                stale.unlink()
        result = "reset"
    elif step == "propose":
        with store.get_connection() as conn:
            result = propose(conn, run_id="bench-propose", anchor_path=governance.anchor)
    elif step == "judge":
        with store.get_connection() as conn:
            result = dict(
                judge_proposed(
                    conn, governance.policy(), run_id="bench-judge", anchor_path=governance.anchor
                )
            )
    elif step == "dispatch":
        report = dispatch(
            store.get_connection,
            governance.policy(),
            dispatcher.target(),
            journal_path=dispatcher.journal,
            run_id="bench-dispatch",
            anchor_path=governance.anchor,
        )
        result = dict(report.outcomes)
    elif step == "lead-reset":
        with store.get_connection() as conn:
            for table in ("decisions", "watermarks"):
                conn.execute(f"DELETE FROM agents.{table} WHERE agent = ?", [LEAD])
            conn.execute("CHECKPOINT")
        result = "reset"
    elif step in ("lead", "lead-whole"):
        slice_ids = int(sys.argv[2]) if step == "lead" and len(sys.argv) > 2 else None
        slice_ids = 0 if step == "lead-whole" else slice_ids
        result = _lead(store, found["agents"].load(), found["lifecycle"].load(), slice_ids)
    else:
        raise SystemExit(f"unknown step {step!r}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{step}: {result} | CPU {usage.ru_utime + usage.ru_stime:.1f} s "
        f"(step {time.process_time() - started:.1f} s) | wall {time.monotonic() - wall:.1f} s "
        f"| peak {usage.ru_maxrss / 1024:,.0f} MB | load {os.getloadavg()[0]:.1f}"
    )


LEAD = "lead_qualification"


def _lead(store, agents, lifecycle, slice_ids: int | None) -> dict:
    """The lead agent's run, offline, as its asset makes it (in slices of ``slice_ids``, by
    default ``SLICE_IDS``) or in one piece (``slice_ids`` 0)."""
    with store.get_connection() as conn:
        tier = offline_tier(conn, config=lifecycle, models=agents.models, scoring=agents.scoring)
    spec = agent_specs(tier)[LEAD]
    if slice_ids != 0:
        report, scope = decide_in_slices(
            store.get_connection, spec, agents, lifecycle, llm=None, run_id="bench-lead",
            models=agents.models, slice_ids=slice_ids or SLICE_IDS,
        )  # fmt: skip
    else:
        with store.get_connection() as conn:
            items, scope = inputs_to_decide(
                conn, spec, agents.agents[LEAD], lifecycle, models=agents.models
            )
        report = run_agent(
            store.get_connection, spec, agents, items, llm=None, run_id="bench-lead",
            seen=scope.seen,
        )  # fmt: skip
    return {
        "scope": scope.why,
        "inputs": report.inputs,
        "offline": report.decisions_by_tier["offline"],
    }


if __name__ == "__main__":
    main(sys.argv[1])
