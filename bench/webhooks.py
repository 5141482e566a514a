"""Webhook receiver under load: requests/s and latency of `revorch serve` on loopback.

    .venv/bin/python bench/webhooks.py                  # HubSpot, 64 connections, 20 s
    .venv/bin/python bench/webhooks.py --kind standard --concurrency 32 --seconds 10
    .venv/bin/python bench/webhooks.py --events-per-request 10
    .venv/bin/python bench/webhooks.py --client wrk --workers 2
    .venv/bin/python bench/webhooks.py --client wrk --ledger 1000

It starts the real receiver (`revorch serve`, in a temporary REVORCH_HOME, its own process
and session) and drives it with `--concurrency` connections, each sending its next request as
soon as the last one is answered. Every request is a distinct, correctly signed delivery
(HubSpot v3, or Standard Webhooks with `--kind standard`). Two load generators:

- `--client aiohttp` (default): an aiohttp client in this process signs each request as it
  sends it, and for each answer checks that the batch it names is already in
  landing/incoming/ (renamed there only after its fsync): durable before the 2xx;
- `--client wrk`: Debian's `wrk` (apt-get install wrk), a C load generator that leaves the
  CPU to the server, replays requests signed just before the run (valid for 5 minutes).

After the run it stops the server and checks that every acknowledged event is in a landed
batch, and no event twice.

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


def write_ledger(home: Path, rows: int) -> None:
    """What a live write-back leaves behind: ``rows`` writes of another property (so the
    pushed lifecyclestage changes still land) to contacts the requests name."""
    from revorch.sources.hubspot.own_writes import OwnWrites

    ledger = OwnWrites(home / "hubspot" / "own-writes.sqlite3")
    for n in range(rows):
        contact = str(100_000 + n * 50_000 // rows)
        ledger.record(
            "contacts",
            contact,
            1_700_000_000_000 + n,
            f"bench-{n}",
            {"hs_lead_status": "UNQUALIFIED"},
        )


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
    latencies.sort()
    p = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": len(latencies),
        "ok": statuses.get(200, 0),
        "statuses": statuses,
        "elapsed": elapsed,
        "p50": p[49],
        "p99": p[98],
        "max": latencies[-1],
        "not_durable": not_durable,
    }


# wrk replays requests signed beforehand (a timestamp stays valid for 5 minutes), one per call.
WRK_SCRIPT = r"""
local requests, n = {}, 0
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  for r in f:read("*a"):gmatch("([^%z]+)") do requests[#requests + 1] = r end
  f:close()
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\n{"requests":%d,"non2xx":%d,"errors":%d,"duration_us":%d,"p50":%d,"p99":%d,"max":%d}\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def drive_wrk(
    url: str, kind: str, concurrency: int, seconds: float, events: int, tmp: Path
) -> dict:
    """The same requests from wrk (Debian's `wrk`), a C load generator that leaves the CPU to
    the server; it checks durability only at the end (every 2xx's events landed)."""
    make = hubspot_request if kind == "hubspot" else standard_request
    path = "/webhooks/hubspot" if kind == "hubspot" else "/webhooks/bench"
    host = url.removeprefix("http://")
    count = int(8000 * seconds)  # more than this machine answers, so none is sent twice
    with open(tmp / "requests.bin", "wb") as out:
        for n in range(count):
            body, headers = make(url + path, n, events)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            out.write(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                f"{head}\r\n".encode()
                + body
                + b"\0"
            )
    (tmp / "bench.lua").write_text(WRK_SCRIPT)
    wrk_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{round(seconds)}s",
        "-s",
        str(tmp / "bench.lua"),
    ]
    finished = subprocess.run(
        [*command, url + path, "--", str(tmp / "requests.bin")],
        check=True,
        capture_output=True,
        text=True,
    )
    output, result_error = finished.stdout, finished.stderr
    wrk_cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - wrk_cpu
    lines = [line for line in output.splitlines() if line.startswith('{"requests"')]
    if not lines:
        raise SystemExit(f"wrk gave no summary:\n{output}{result_error}")
    result = json.loads(lines[-1])
    assert result["requests"] <= count, "wrk sent some requests twice; raise the count"
    return {
        "requests": result["requests"],
        "ok": result["requests"] - result["non2xx"],
        "statuses": result,
        "elapsed": result["duration_us"] / 1e6,
        "p50": result["p50"] / 1e6,
        "p99": result["p99"] / 1e6,
        "max": result["max"] / 1e6,
        "not_durable": None,
        "client_cpu": wrk_cpu,  # wrk's own, not the signing beforehand
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["hubspot", "standard"], default="hubspot")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--events-per-request", dest="events", type=int, default=1)
    parser.add_argument(
        "--client", choices=["aiohttp", "wrk"], default="aiohttp", help="the load generator"
    )
    parser.add_argument("--workers", type=int, default=1, help="revorch serve --workers")
    parser.add_argument(
        "--ledger",
        type=int,
        default=0,
        metavar="ROWS",
        help="start with a write-back ledger of ROWS writes to the contacts the requests change, "
        "which every HubSpot request then reads (loop protection)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="revorch-bench-webhooks-") as tmp:
        home = Path(tmp)
        incoming = home / "landing" / "incoming"
        if args.ledger:
            write_ledger(home, args.ledger)
        server, url, log = start_server(home, args.workers)
        try:
            load_before = os.getloadavg()
            server_cpu = cpu_seconds(server.pid)
            client_cpu = client_cpu_seconds()
            run = (
                drive_wrk(url, args.kind, args.concurrency, args.seconds, args.events, home)
                if args.client == "wrk"
                else asyncio.run(
                    drive(url, args.kind, args.concurrency, args.seconds, args.events, incoming)
                )
            )
            server_cpu = cpu_seconds(server.pid) - server_cpu
            client_cpu = run.get("client_cpu", client_cpu_seconds() - client_cpu)
            load_after = os.getloadavg()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)

        batches = sorted(incoming.glob("*.ndjson"))
        landed = [json.loads(line)["event_id"] for b in batches for line in b.read_text().split()]
        if run["ok"] < run["requests"]:
            print(f"answers: {run['statuses']}; the server said:", *log[-5:], file=sys.stderr)
        expected = run["ok"] * args.events
        # wrk stops with requests in flight: the server may have landed those too.
        in_flight = args.concurrency * args.events if args.client == "wrk" else 0
        assert len(landed) == len(set(landed)), "an event landed twice"
        assert expected <= len(landed) <= expected + in_flight, (len(landed), expected)
        assert not run["not_durable"], f"{run['not_durable']} answers came before their batch"
        print(
            "| client | kind | workers | connections | events/request | requests | non-2xx "
            "| requests/s | events/s | p50 ms | p99 ms | max ms | requests per fsync "
            "| server CPU s | client CPU s | ledger rows | load before -> after |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        print(
            f"| {args.client} | {args.kind} | {args.workers} | {args.concurrency} | {args.events} "
            f"| {run['requests']:,} | {run['requests'] - run['ok']} "
            f"| {run['requests'] / run['elapsed']:,.0f} | {expected / run['elapsed']:,.0f} "
            f"| {run['p50'] * 1000:.1f} | {run['p99'] * 1000:.1f} | {run['max'] * 1000:.1f} "
            f"| {run['ok'] / max(len(batches), 1):.1f} | {server_cpu:.1f} | {client_cpu:.1f} "
            f"| {args.ledger:,} | {load_before[0]:.2f} -> {load_after[0]:.2f} |"
        )


def client_cpu_seconds() -> float:
    """This process and the children it waited for (wrk)."""
    return sum(
        sum(resource.getrusage(who)[:2]) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )


def free_port() -> int:
    # A port chosen here, as `--workers` needs a fixed one (workers share the socket).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
