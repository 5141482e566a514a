"""Agents benchmark: the memo on a second run, and offline scoring at 1M leads.

    .venv/bin/python bench/agents.py                     # 20,000-contact CRM (about 1 minute)
    .venv/bin/python bench/agents.py --contacts 5000

1. Builds a simulated CRM (seed 42), starts the OpenAI-compatible test server on 127.0.0.1
   (tests/fake_openai.py, 50 ms per answer), and runs the lead-qualification agent with the
   shipped routing rule: the offline tier decides, the uncertain or high-value leads go to the
   LLM tier. The budget is raised so that every routed lead is asked (a budget-capped run leaves
   the rest to be asked next time, which would blur the comparison), and the request limit to
   6,000 a minute (tokens 10M) so the run takes about a minute.
2. Changes 1% of the open leads (a new job title each, landed as a batch and ingested) and runs
   the agent again: only changed inputs should be decided again.
3. Scores 1,000,000 lead inputs with the offline lead model (the open leads repeated).

    .venv/bin/python bench/agents.py --inputs --contacts 100000

Input building of every agent, incremental (revorch/agents/incremental.py): on a simulated CRM
(seed 42, fixed rule clock) every agent decides once on the offline tier; then the CPU and wall
seconds of planning, building and recording every agent's inputs: a run with nothing changed,
a full rebuild (every open item built, all memo hits), and a run after 1,000 contacts changed
(a new job title each, landed, ingested, stages refreshed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import duckdb  # noqa: E402
import polars as pl  # noqa: E402

from fake_openai import FakeOpenAI  # noqa: E402
from ingest import machine  # noqa: E402
from resources.agents import LlmResource  # noqa: E402
from resources.state_store import CONNECTION_CONFIG  # noqa: E402
from revorch import clock  # noqa: E402
from revorch.agents.config import Budget, load_agents_config  # noqa: E402
from revorch.agents.models import offline_tier  # noqa: E402
from revorch.agents.registry import INPUTS, OUTPUTS, agent_specs, inputs_to_decide  # noqa: E402
from revorch.agents.runtime import keep_open, run_agent  # noqa: E402
from revorch.definitions import THROUGH_HANDOFFS, materialize  # noqa: E402
from revorch.landing import LandingZone  # noqa: E402
from revorch.lifecycle.config import load_lifecycle_config  # noqa: E402
from revorch.simulator import SimulationConfig, simulate_history  # noqa: E402

AGENT = "lead_qualification"


def refresh(database: Path, zone: LandingZone, clock_setting: str = clock.WALL) -> None:
    """Ingest what waits and bring the stages up to date, through the asset graph."""
    materialize(THROUGH_HANDOFFS, database=database, landing=zone.root, clock=clock_setting)


# A fixed rule clock (the history ends today), so every run reads the same "now".
FIXED_AT = datetime.now(UTC).replace(microsecond=0)
FIXED_CLOCK = FIXED_AT.isoformat()


def every_agent(conn, *, full_rebuild: bool = False) -> tuple[dict[str, int], float, float]:
    """Plan, build and record every agent's inputs on the offline tier, as the assets do; the
    inputs built per agent, and the CPU and wall seconds it took."""
    lifecycle, config = load_lifecycle_config(), load_agents_config()
    specs = agent_specs(offline_tier(conn, config=lifecycle))
    built = {}
    cpu, wall = time.process_time(), time.perf_counter()
    for name in OUTPUTS:
        settings = config.agents[name]
        items, scope = inputs_to_decide(
            conn, specs[name], settings, lifecycle, full_rebuild=full_rebuild
        )
        run_agent(
            keep_open(conn), specs[name], config, items, llm=None, run_id=scope.why,
            settings=settings, seen=scope.seen,
        )  # fmt: skip
        built[name] = len(items)
    return built, time.process_time() - cpu, time.perf_counter() - wall


def inputs_bench(contacts: int) -> None:
    import os

    workdir = Path(tempfile.mkdtemp(prefix="revorch-agent-inputs-"))
    zone = LandingZone(workdir / "landing").ensure()
    database = workdir / "revorch.duckdb"
    start = time.perf_counter()
    simulate_history(zone, SimulationConfig(contacts=contacts, seed=42))
    refresh(database, zone, FIXED_CLOCK)
    conn = duckdb.connect(str(database), config=CONNECTION_CONFIG)
    conn.execute("SET TimeZone = 'UTC'")
    clock.bind(conn, FIXED_CLOCK)
    first, cpu, wall = every_agent(conn)
    print(f"Machine: {machine()}; load {os.getloadavg()[0]:.1f} at start")
    print(f"{contacts:,} contacts; CRM built in {time.perf_counter() - start:.0f} s\n")
    print("| run | load (1 min) | inputs built | " + " | ".join(OUTPUTS) + " | CPU s | wall s |")
    print("|---|---:|---:|" + "---:|" * len(OUTPUTS) + "---:|---:|")

    def row(label, built, cpu, wall):
        print(
            f"| {label} | {os.getloadavg()[0]:.1f} | {sum(built.values()):,} | "
            + " | ".join(f"{built[n]:,}" for n in OUTPUTS)
            + f" | {cpu:.2f} | {wall:.2f} |",
            flush=True,
        )

    row("first run (every open item)", first, cpu, wall)
    row("nothing changed", *every_agent(conn))
    row("full rebuild, nothing changed", *every_agent(conn, full_rebuild=True))
    leads = [r[0] for r in conn.execute(
        "SELECT entity_id FROM stages.entity_stages WHERE entity_type = 'contact' "
        "ORDER BY hash(entity_id) LIMIT 1000").fetchall()]  # fmt: skip
    zone.write_events(
        "bench",
        [
            {
                "event_id": f"bench-inputs-{lead}",
                "object_type": "contact",
                "object_id": lead,
                "occurred_at": (FIXED_AT - timedelta(minutes=1)).isoformat(),
                "properties": {"job_title": "Head of Revenue Operations"},
            }
            for lead in leads
        ],
    )
    conn.close()
    refresh(database, zone, FIXED_CLOCK)
    conn = duckdb.connect(str(database), config=CONNECTION_CONFIG)
    conn.execute("SET TimeZone = 'UTC'")
    clock.bind(conn, FIXED_CLOCK)
    row("1,000 contacts changed", *every_agent(conn))
    row("nothing changed again", *every_agent(conn))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--inputs", action="store_true", help="time every agent's input building")
    args = parser.parse_args()
    if args.inputs:
        inputs_bench(args.contacts)
        return
    workdir = Path(tempfile.mkdtemp(prefix="revorch-agents-"))
    zone = LandingZone(workdir / "landing").ensure()
    database = workdir / "revorch.duckdb"
    simulate_history(zone, SimulationConfig(contacts=args.contacts, seed=42))
    refresh(database, zone)
    # Kept open while the graph runs in this process: the same configuration as its own.
    conn = duckdb.connect(str(database), config=CONNECTION_CONFIG)
    conn.execute("SET TimeZone = 'UTC'")
    shipped = load_agents_config()
    config = shipped.model_copy(
        update={
            "limits": shipped.limits.model_copy(
                update={
                    "requests_per_minute": 6_000,
                    "tokens_per_minute": 10_000_000,
                    "max_concurrency": 32,
                }
            ),
            "agents": {
                name: agent.model_copy(
                    update={"budget": Budget(per_run_usd=100.0, per_day_usd=100.0)}
                )
                for name, agent in shipped.agents.items()
            },
        }
    )
    spec = agent_specs(offline_tier(conn))[AGENT]

    print(f"Machine: {machine()}\n")
    print(
        "| run | leads | memo hits | decided offline | LLM calls | fallbacks | cost USD | seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with FakeOpenAI(latency_seconds=0.05) as server:
        llm = LlmResource(base_url=server.base_url, api_key="bench").client(
            config, config.agents[AGENT].model
        )
        reports = []
        for label in ("first run", "after 1% of leads changed"):
            if reports:
                leads = [item["id"] for item in INPUTS[AGENT](conn)]
                changed = leads[::100]
                zone.write_events(
                    "bench",
                    [
                        {
                            "event_id": f"bench-{lead}",
                            "object_type": "contact",
                            "object_id": lead,
                            "occurred_at": "2026-10-31T23:59:00Z",
                            "properties": {"job_title": "Head of Revenue Operations"},
                        }
                        for lead in changed
                    ],
                )
                refresh(database, zone)
            items = INPUTS[AGENT](conn)
            start = time.perf_counter()
            report = run_agent(keep_open(conn), spec, config, items, llm=llm, run_id=label)
            seconds = time.perf_counter() - start
            reports.append(report)
            print(
                f"| {label} | {len(items):,} | {report.memo_hits:,} "
                f"| {report.decisions_by_tier['offline']:,} | {report.calls:,} "
                f"| {sum(report.fallbacks.values()):,} "
                f"| {report.cost_usd:.4f} | {seconds:.1f} |",
                flush=True,
            )
    first, second = reports
    print(f"\nSecond run's LLM calls: {second.calls / max(first.calls, 1):.1%} of the first run's.")

    model = offline_tier(conn).lead_model
    inputs = INPUTS[AGENT](conn)
    rows = (inputs * (1_000_000 // len(inputs) + 1))[:1_000_000]
    frame = pl.DataFrame(
        {k: [r[k] for r in rows] for k in inputs[0] if k != "recent_activity"}, strict=False
    )
    start = time.perf_counter()
    scores = model.predict_frame(frame)
    seconds = time.perf_counter() - start
    print(
        f"\nOffline lead scoring: {len(scores):,} leads in {seconds:.2f} s "
        f"({len(scores) / seconds:,.0f} leads/s)"
    )


if __name__ == "__main__":
    main()
