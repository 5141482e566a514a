"""LLM client throughput: how close `LlmClient` gets to its requests-per-minute limit.

    .venv/bin/python bench/llm_throughput.py                        # three limits, about 1 minute
    .venv/bin/python bench/llm_throughput.py --runs 600:300:16 --latency 0.5

Each run is R:N:C, a limit of R requests/minute, N requests, C workers (max_concurrency). The
OpenAI-compatible test server (tests/fake_openai.py) runs in its own process on 127.0.0.1 and
answers every request after a fixed latency; the token limit is set far above what the runs
use so that only the request limit binds. For each run:

- achieved req/min: N / (wall time from the first request sent to the last result) x 60, and
  its ratio to R (the goal is at least 90%);
- sent req/min: the rate at which requests reached the server ((N - 1) / the time between the
  first and the last arrival), which the limiter must keep at or below R;
- p50 / p95 s: each request's `latency_seconds` (first attempt to result, excluding the wait
  for the rate limiter);
- max in flight: the most concurrent requests the server saw (at most C).

It prints a Markdown table; bench/README.md keeps the measured ones. Offline; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI
from revorch.agents.llm import LlmClient, LlmRequest, LlmSettings
from revorch.agents.schemas import LeadQualification

ANSWER = {
    "confidence": 0.8,
    "reasons": ["visited pricing twice", "ICP industry"],
    "fit_score": 0.9,
    "intent_score": 0.7,
    "next_action": "fast_track_to_sales",
}


@dataclass(frozen=True)
class Run:
    requests_per_minute: int
    requests: int
    concurrency: int

    @classmethod
    def parse(cls, text: str) -> Run:
        rpm, count, workers = (int(part) for part in text.split(":"))
        return cls(rpm, count, workers)


def answer(body: dict) -> dict:
    return ANSWER


def serve(latency: float, conn: Connection) -> None:
    """The server process: report the base URL, then the server's counters when told to stop."""
    with FakeOpenAI(answer, latency_seconds=latency) as server:
        conn.send(server.base_url)
        conn.recv()  # "stop"
        arrivals = [r["at"] for r in server.received]
        conn.send({"max_in_flight": server.max_in_flight, "arrivals": arrivals})


def measure(run: Run, base_url: str, conn: Connection) -> dict:
    settings = LlmSettings(
        base_url=base_url,
        api_key="bench-key",
        model="gpt-4o-mini",
        timeout_seconds=30,
        requests_per_minute=run.requests_per_minute,
        tokens_per_minute=1_000_000_000,
        max_concurrency=run.concurrency,
    )
    requests = [
        LlmRequest(
            f"lead-{i}",
            [
                {"role": "system", "content": "You qualify B2B leads for a RevOps team."},
                {"role": "user", "content": f"Lead {i}: ACME GmbH, 200 employees, SaaS."},
            ],
            LeadQualification,
            "lead_qualification",
        )
        for i in range(run.requests)
    ]
    with LlmClient(settings) as client:
        started = time.monotonic()
        results = client.complete_many(requests)
        wall = time.monotonic() - started
    conn.send("stop")
    server = conn.recv()
    arrivals = sorted(server["arrivals"])
    latencies = sorted(r.latency_seconds for r in results)
    achieved = run.requests / wall * 60
    return {
        "wall": wall,
        "achieved": achieved,
        "ratio": achieved / run.requests_per_minute,
        "sent": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60,
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "max_in_flight": server["max_in_flight"],
        "errors": sum(r.error_kind is not None for r in results),
    }


def machine() -> str:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, "
        f"Python {platform.python_version()}, openai {openai.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=Run.parse,
        nargs="+",
        default=[Run(600, 300, 16), Run(1200, 400, 16), Run(3000, 500, 32)],
        metavar="R:N:C",
        help="requests/minute limit : requests : max_concurrency",
    )
    parser.add_argument("--latency", type=float, default=0.5, help="server latency, seconds")
    args = parser.parse_args()

    rows = []
    for run in args.runs:
        # A fresh server process per run, so the client and server do not share one GIL.
        here, there = multiprocessing.Pipe()
        process = multiprocessing.Process(target=serve, args=(args.latency, there), daemon=True)
        process.start()
        base_url = here.recv()
        result = measure(run, base_url, here)
        process.join(timeout=10)
        rows.append((run, result))
        print(f"R={run.requests_per_minute}: {result['achieved']:.0f} req/min", file=sys.stderr)

    print(f"Machine: {machine()}; server latency {args.latency:g} s.\n")
    print(
        "| R req/min | requests | concurrency | wall s | achieved req/min | achieved / R "
        "| sent req/min | p50 s | p95 s | max in flight | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run, r in rows:
        print(
            f"| {run.requests_per_minute:,} | {run.requests:,} | {run.concurrency} "
            f"| {r['wall']:.1f} | {r['achieved']:,.0f} | {r['ratio']:.1%} | {r['sent']:,.0f} "
            f"| {r['p50']:.3f} | {r['p95']:.3f} | {r['max_in_flight']} | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
