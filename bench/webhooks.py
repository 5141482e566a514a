"""Webhook receiver under load: requests/s and latency of `revorch serve` on loopback.

    .venv/bin/python bench/webhooks.py                  # HubSpot, 64 connections, 20 s
    .venv/bin/python bench/webhooks.py --kind standard --concurrency 32 --seconds 10
    .venv/bin/python bench/webhooks.py --events-per-request 10

It starts the real receiver (`revorch serve --port 0`, in a temporary REVORCH_HOME, its own
process and session) and drives it with an aiohttp client from this process: `--concurrency`
connections, each sending its next request as soon as the last one is answered. Every request
is a distinct, correctly signed delivery (HubSpot v3, or Standard Webhooks with
`--kind standard`), signed as it is sent. For each answer it records the latency and checks
that the batch the answer names is already in landing/incoming/ (renamed there only after
its fsync): durable before the 2xx. After the run it stops the server and checks that every
acknowledged event is in a landed batch, once.

It prints one Markdown row: requests/s, p50/p99/max latency, how many requests shared one
fsync, the CPU seconds of the server and of the client, and the load average (`uptime`)
before and after. Offline; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

CLIENT_SECRET = "bench-client-secret"
SOURCE_KEY = b"bench-standard-webhooks-secret!!"


def hubspot_request(url: str, n: int, events: int) -> tuple[bytes, dict[str, str]]:
    at = int(time.time() * 1000)
    body = json.dumps(
        [
            {
                "eventId": n * events + i,
                "subscriptionId": 1,
                "portalId": 33,
                "appId": 7,
                "occurredAt": at,
                "subscriptionType": "contact.propertyChange",
                "attemptNumber": 0,
                "objectId": 100_000 + (n * events + i) % 50_000,
                "propertyName": "lifecyclestage",
                "propertyValue": "marketingqualifiedlead",
                "changeSource": "CRM",
            }
            for i in range(events)
        ]
    ).encode()
    stamp = str(at)
    message = b"POST" + url.encode() + body + stamp.encode()
    signature = base64.b64encode(
        hmac.new(CLIENT_SECRET.encode(), message, hashlib.sha256).digest()
    ).decode()
    return body, {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": stamp,
    }


def standard_request(url: str, n: int, events: int) -> tuple[bytes, dict[str, str]]:
    stamp = str(int(time.time()))
    body = json.dumps(
        [
            {
                "event_id": f"bench:{n * events + i}",
                "object_type": "contact",
                "object_id": f"c-{(n * events + i) % 50_000}",
                "occurred_at": "2026-03-01T09:30:00Z",
                "properties": {"lifecycle_stage": "marketingqualifiedlead"},
            }
            for i in range(events)
        ]
    ).encode()
    msg_id = f"msg_{n}"
    digest = hmac.new(SOURCE_KEY, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return body, {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def start_server(home: Path, workers: int) -> tuple[subprocess.Popen, str, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    env |= {
        "REVORCH_HOME": str(home),
        "REVORCH_HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "REVORCH_SOURCE_SECRET_BENCH": "whsec_" + base64.b64encode(SOURCE_KEY).decode(),
    }
    revorch = Path(sys.executable).with_name("revorch")
    server = subprocess.Popen(
        [str(revorch), "serve", "--port", str(free_port()), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log: list[str] = []
    url, started = None, 0
    for line in server.stderr:
        log.append(line)
        if "Uvicorn running on " in line:
            url = line.split("Uvicorn running on ")[1].split()[0]
        started += "Application startup complete" in line
        if url and started == workers:
            break
    else:
        os.killpg(server.pid, signal.SIGTERM)
        raise SystemExit("revorch serve did not start:\n" + "".join(log))
    # Keep reading its log (refusals are logged), so the pipe never fills.
    threading.Thread(target=lambda: log.extend(server.stderr), daemon=True).start()
    return server, url, log


def cpu_seconds(session: int) -> float:
    """CPU seconds of every live process in the server's session (its workers too)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def drive(
    url: str, kind: str, concurrency: int, seconds: float, events: int, incoming: Path
) -> dict:
    make = hubspot_request if kind == "hubspot" else standard_request
    target = f"{url}/webhooks/{'hubspot' if kind == 'hubspot' else 'bench'}"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acknowledged: set[str] = set()
    not_durable = 0
    durable_batches: set[str] = set()
    counter = iter(range(10**12))
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal not_durable
        while time.perf_counter() < deadline:
            n = next(counter)
            body, headers = make(target, n, events)
            start = time.perf_counter()
            async with session.post(target, data=body, headers=headers) as response:
                answer = await response.json()
            latencies.append(time.perf_counter() - start)
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 200:
                batch = answer["batch_id"]
                if batch not in durable_batches:
                    if (incoming / f"{batch}.ndjson").exists():
                        durable_batches.add(batch)
                    else:
                        not_durable += 1
                acknowledged.add(str(n))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "latencies": latencies,
        "statuses": statuses,
        "acknowledged": acknowledged,
        "not_durable": not_durable,
        "elapsed": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["hubspot", "standard"], default="hubspot")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--events-per-request", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="revorch serve --workers")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="revorch-bench-webhooks-") as tmp:
        home = Path(tmp)
        server, url, log = start_server(home, args.workers)
        try:
            load_before = os.getloadavg()
            server_cpu = cpu_seconds(server.pid)
            client_cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            run = asyncio.run(
                drive(
                    url,
                    args.kind,
                    args.concurrency,
                    args.seconds,
                    args.events_per_request,
                    home / "landing" / "incoming",
                )
            )
            server_cpu = cpu_seconds(server.pid) - server_cpu
            client_cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - client_cpu
            load_after = os.getloadavg()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
        batches = len(list((home / "landing" / "incoming").glob("*.ndjson")))

        landed = [
            json.loads(line)["event_id"]
            for path in sorted((home / "landing" / "incoming").glob("*.ndjson"))
            for line in path.read_text().splitlines()
        ]
        ok = run["statuses"].get(200, 0)
        if ok < len(run["latencies"]):
            print(f"answers: {run['statuses']}; the server said:", *log[-5:], file=sys.stderr)
        expected = ok * args.events_per_request
        assert len(landed) == len(set(landed)) == expected, (len(landed), expected)
        assert run["not_durable"] == 0, f"{run['not_durable']} answers came before their batch"
        latencies = sorted(run["latencies"])
        p = statistics.quantiles(latencies, n=100, method="inclusive")
        requests = len(latencies)
        print(
            "| kind | workers | connections | events/request | requests | non-2xx | requests/s "
            "| events/s | p50 ms | p99 ms | max ms | requests per fsync | server CPU s "
            "| client CPU s | load before -> after |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        print(
            f"| {args.kind} | {args.workers} | {args.concurrency} | {args.events_per_request} "
            f"| {requests:,} "
            f"| {requests - ok} | {requests / run['elapsed']:,.0f} "
            f"| {expected / run['elapsed']:,.0f} | {p[49] * 1000:.1f} | {p[98] * 1000:.1f} "
            f"| {latencies[-1] * 1000:.1f} | {ok / max(batches, 1):.1f} | {server_cpu:.1f} "
            f"| {client_cpu:.1f} | {load_before[0]:.2f} -> {load_after[0]:.2f} |"
        )


def free_port() -> int:
    # A port chosen here, as `--workers` needs a fixed one (workers share the socket).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
