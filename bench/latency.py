"""End-to-end latency with `dagster dev` running: batch landed -> readable by analysts.

    .venv/bin/python bench/latency.py                         # 5k contacts, 25 batches, 3 s apart
    .venv/bin/python bench/latency.py --batches 20 --interval 2 --events-per-batch 500

In a fresh temporary REVORCH_HOME (with DAGSTER_HOME = REVORCH_HOME/dagster holding the
project's dagster.yaml) it seeds a simulated history into the landing zone, starts
`dagster dev -w workspace.yaml -h 127.0.0.1` in its own session, waits until the seed batches
are in the published copy, then streams live batches with the simulator. For each live batch:

- t0: the moment `stream_live` yields it (it has just been renamed into landing/incoming/);
- t1: the first poll (every 0.2 s) at which a read-only connection to the published copy
  ($REVORCH_HOME/published/revorch.duckdb, replaced atomically at the end of every
  `revorch_main` run, after every stage asset) finds its batch id in `landing_batches`.

Latency = t1 - t0. A batch not visible within --timeout seconds is a miss. From Dagster's
GraphQL API it also counts the runs that succeeded and failed, looks for DuckDB lock errors
("Could not set lock" / "Conflicting lock") in the runs' event logs, and splits each batch's
latency into phases using the run that loaded it (`landing_batches.run_id`):

- sensor:  landed -> the run that loaded it was created (the sensor's tick);
- queue:   created -> the run process started (run queue, pool gating, process launch);
- execute: started -> visible in the published copy (steps, publish, the 0.2 s poll).

It prints Markdown tables; bench/README.md keeps the measured ones. Offline; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOCK_MARKERS = ("Could not set lock", "Conflicting lock")
WRITER_POOL = "duckdb_writer"
ACTIVE_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


# --------------------------------------------------------------------------- environment


def prepare_home(home: Path) -> dict[str, str]:
    """Create REVORCH_HOME with the project's Dagster instance; return the env for `dagster dev`.

    ``ensure_dagster_home`` sets ``os.environ["DAGSTER_HOME"]``; this process's environment is
    restored afterwards so callers (pytest) see no change.
    """
    from revorch.instance import ensure_dagster_home

    home.mkdir(parents=True, exist_ok=True)
    wanted = {
        "REVORCH_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "REVORCH_PUBLISHED_DB": str(home / "published" / "revorch.duckdb"),
    }
    names = [*wanted, "REVORCH_DB", "REVORCH_LANDING"]
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in ("REVORCH_DB", "REVORCH_LANDING"):
            os.environ.pop(name, None)  # everything under this REVORCH_HOME
        os.environ.update(wanted)
        ensure_dagster_home()
        env = {**os.environ}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return env


def slow_model(latency: float):
    """An OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py) that answers every
    request after ``latency`` seconds: agents then wait on the network in every run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_openai import FakeOpenAI

    return FakeOpenAI(latency_seconds=latency).start()


def published_path(env: dict[str, str]) -> Path:
    return Path(env["REVORCH_PUBLISHED_DB"])


def landing_zone(env: dict[str, str]):
    from revorch.landing import LandingZone

    return LandingZone(Path(env["REVORCH_HOME"]) / "landing").ensure()


def seed_history(env: dict[str, str], contacts: int, seed: int = 42) -> list[str]:
    """Write a simulated history into the landing zone; return the seed batches' ids."""
    from revorch.landing import batch_id_of
    from revorch.simulator import SimulationConfig, simulate_history

    zone = landing_zone(env)
    simulate_history(zone, SimulationConfig(contacts=contacts, seed=seed))
    return [batch_id_of(path) for path in zone.pending()]


def machine() -> dict[str, str]:
    import dagster
    import duckdb

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ram_text = f"{ram:.0f} GiB"
    except (ValueError, OSError):
        ram_text = "?"
    return {
        "machine": platform.machine(),
        "cores": str(os.cpu_count()),
        "ram": ram_text,
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "dagster": dagster.__version__,
    }


# --------------------------------------------------------------------------- dagster dev


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.load(response)
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    return body["data"]


READY_QUERY = """
{
  repositoriesOrError {
    ... on RepositoryConnection { nodes { sensors { name sensorState { status } } } }
  }
}
"""


class DagsterDev:
    """`dagster dev` in its own session; ``stop`` ends the whole process group."""

    def __init__(self, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.env = env
        self.port = port or free_port()
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    def start(self) -> DagsterDev:
        dagster = Path(sys.executable).with_name("dagster")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log_dir / "dagster_dev.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # webserver, daemon and code servers stop together
        )
        return self

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the webserver answers and the landing-zone sensor is RUNNING."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited; see {self.log_dir / 'dagster_dev.log'}")
            with contextlib.suppress(OSError, RuntimeError, KeyError, TypeError, ValueError):
                data = graphql(self.port, READY_QUERY, timeout=5)
                states = {
                    sensor["name"]: sensor["sensorState"]["status"]
                    for repo in data["repositoriesOrError"]["nodes"]
                    for sensor in repo["sensors"]
                }
                if states.get("landing_zone_sensor") == "RUNNING":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"dagster dev not ready after {timeout:.0f} s")
            time.sleep(1)

    def stop(self, grace: float = 30) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            # Children (code servers, run workers) may outlive the leader: end the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        finally:
            self._out.close()

    def __enter__(self) -> DagsterDev:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- published copy


def published_batch_ids(path: Path) -> set[str]:
    """Batch ids in the published copy's ``landing_batches``; raises if it cannot be read.

    A fresh in-memory DuckDB attaches the file read-only. A plain
    ``duckdb.connect(path, read_only=True)`` would do the same, except that DuckDB caches one
    database instance per path and process: while any other connection in this process (an
    analyst thread in the tests) has the path open, a new connect is served from the old,
    replaced file. A fresh instance always opens the file that is at the path now.
    """
    import duckdb

    with duckdb.connect() as conn:
        conn.execute(_attach_sql(path))
        rows = conn.execute("SELECT batch_id FROM published.landing_batches").fetchall()
        return {row[0] for row in rows}


def _attach_sql(path: Path) -> str:
    quoted = str(path).replace("'", "''")
    return f"ATTACH '{quoted}' AS published (READ_ONLY)"


def wait_for_batches(path: Path, batch_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wanted = set(batch_ids)
    last = "the published copy does not exist yet"
    while True:
        try:
            missing = wanted - published_batch_ids(path)
            if not missing:
                return
            last = f"{len(missing)} of them not in landing_batches yet"
        except Exception as error:  # absent or being replaced: try again
            last = f"{type(error).__name__}: {error}"
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(wanted)} seed batches not published within {timeout:.0f} s ({last})"
            )
        time.sleep(0.5)


class PublishedWatcher(threading.Thread):
    """Polls the published copy every ``interval`` s; records when each batch id first shows."""

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        super().__init__(name="published-watcher", daemon=True)
        self.path = path
        self.interval = interval
        self.first_seen: dict[str, tuple[float, float]] = {}  # id -> (monotonic, wall)
        self.run_of: dict[str, str] = {}
        self.polls = 0
        self.errors: list[str] = []  # tolerated: the file is replaced or briefly absent
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        import duckdb

        while not self._halt.is_set():
            started = time.monotonic()
            try:
                with duckdb.connect() as conn:
                    conn.execute(_attach_sql(self.path))
                    rows = conn.execute(
                        "SELECT batch_id, run_id FROM published.landing_batches"
                    ).fetchall()
                seen_mono, seen_wall = time.monotonic(), time.time()
                with self._lock:
                    self.polls += 1
                    for batch_id, run_id in rows:
                        if batch_id not in self.first_seen:
                            self.first_seen[batch_id] = (seen_mono, seen_wall)
                            self.run_of[batch_id] = run_id
            except Exception as error:  # replaced or absent: retry at the next poll
                with self._lock:
                    self.errors.append(f"{type(error).__name__}: {error}")
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def seen(self, batch_id: str) -> tuple[float, float] | None:
        with self._lock:
            return self.first_seen.get(batch_id)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# --------------------------------------------------------------------------- live stream


@dataclass
class LiveResult:
    landed: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (mono, wall)
    latency: dict[str, float] = field(default_factory=dict)  # visible batches only
    missed: list[str] = field(default_factory=list)
    seen_wall: dict[str, float] = field(default_factory=dict)
    run_of: dict[str, str] = field(default_factory=dict)
    watcher_polls: int = 0
    watcher_errors: int = 0


def stream_and_measure(
    env: dict[str, str],
    *,
    batches: int,
    interval: float,
    events_per_batch: int,
    timeout: float,
    contacts: int,
    seed: int = 42,
    on_batch=None,
) -> LiveResult:
    """Stream live batches and time each until it is visible in the published copy."""
    from revorch.landing import batch_id_of
    from revorch.simulator import SimulationConfig, stream_live

    result = LiveResult()
    watcher = PublishedWatcher(published_path(env))
    watcher.start()
    stop = threading.Event()
    try:
        config = SimulationConfig(contacts=contacts, seed=seed)
        stream_deadline = time.monotonic() + batches * (interval + 30) + 120
        for path in stream_live(
            landing_zone(env),
            config,
            events_per_batch=events_per_batch,
            interval_seconds=interval,
            max_batches=batches,
            stop=stop,
        ):
            result.landed[batch_id_of(path)] = (time.monotonic(), time.time())
            if on_batch:
                on_batch(batch_id_of(path))
            if time.monotonic() > stream_deadline:
                stop.set()
        # Every batch gets its own `timeout` from the moment it landed.
        for batch_id, (t0, _) in result.landed.items():
            while watcher.seen(batch_id) is None and time.monotonic() < t0 + timeout:
                time.sleep(0.1)
    finally:
        watcher.stop()
    for batch_id, (t0, _) in result.landed.items():
        seen = watcher.first_seen.get(batch_id)
        if seen is None or seen[0] - t0 > timeout:
            result.missed.append(batch_id)
        else:
            result.latency[batch_id] = seen[0] - t0
            result.seen_wall[batch_id] = seen[1]
            result.run_of[batch_id] = watcher.run_of[batch_id]
    result.watcher_polls = watcher.polls
    result.watcher_errors = len(watcher.errors)
    return result


# --------------------------------------------------------------------------- runs via GraphQL

RUNS_QUERY = """
query Runs($cursor: String) {
  runsOrError(limit: 100, cursor: $cursor) {
    __typename
    ... on Runs {
      results {
        runId jobName status creationTime startTime endTime tags { key value }
        stepStats { stepKey status startTime endTime }
      }
    }
    ... on PythonError { message }
  }
}
"""

LOGS_QUERY = """
query Logs($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor, limit: 1000) {
    __typename
    ... on EventConnection {
      cursor hasMore
      events {
        __typename
        ... on MessageEvent { message }
        ... on ExecutionStepFailureEvent { error { message stack causes { message stack } } }
        ... on RunFailureEvent { error { message stack causes { message stack } } }
        ... on EngineEvent { error { message stack causes { message stack } } }
      }
    }
    ... on PythonError { message }
  }
}
"""

POOLS_QUERY = "{ assetNodes { opNames pools } }"


LAUNCH_MUTATION = """
mutation Launch($selector: JobOrPipelineSelector!) {
  launchRun(executionParams: {selector: $selector, runConfigData: {}}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

REPOSITORY_QUERY = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
)


def launch_run(port: int, job: str = "revorch_main") -> str:
    """Submit a run of ``job`` as the UI's Launch button does (it queues); return its id."""
    (repo,) = graphql(port, REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
    selector = {
        "repositoryLocationName": repo["location"]["name"],
        "repositoryName": repo["name"],
        "jobName": job,
    }
    data = graphql(port, LAUNCH_MUTATION, {"selector": selector})["launchRun"]
    if data["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launchRun: {data}")
    return data["run"]["runId"]


def runs(port: int) -> list[dict]:
    """Every run of every job (scheduled scans write DuckDB too), newest first."""
    found: list[dict] = []
    cursor = None
    while True:
        data = graphql(port, RUNS_QUERY, {"cursor": cursor})["runsOrError"]
        if data["__typename"] != "Runs":
            raise RuntimeError(f"runsOrError: {data}")
        page = data["results"]
        found.extend(page)
        if len(page) < 100:
            return found
        cursor = page[-1]["runId"]


def run_log_text(port: int, run_id: str) -> str:
    """The run's whole event log (messages and errors) as one JSON text."""
    parts: list[str] = []
    cursor = None
    for _ in range(100):
        data = graphql(port, LOGS_QUERY, {"runId": run_id, "cursor": cursor})["logsForRun"]
        parts.append(json.dumps(data))
        if data["__typename"] != "EventConnection" or not data["hasMore"]:
            break
        cursor = data["cursor"]
    return "\n".join(parts)


def runs_with_lock_errors(port: int, run_list: list[dict]) -> list[str]:
    return [
        run["runId"]
        for run in run_list
        if any(marker in run_log_text(port, run["runId"]) for marker in LOCK_MARKERS)
    ]


def wait_runs_settled(port: int, timeout: float) -> list[dict]:
    """Wait until no run is queued or in progress; return all runs."""
    deadline = time.monotonic() + timeout
    while True:
        run_list = runs(port)
        if not any(run["status"] in ACTIVE_STATUSES for run in run_list):
            return run_list
        if time.monotonic() > deadline:
            return run_list
        time.sleep(1)


def sensor_runs(run_list: list[dict], sensor: str = "landing_zone_sensor") -> list[dict]:
    """The runs that ``sensor`` requested."""
    return [
        run
        for run in run_list
        if {"key": "dagster/sensor_name", "value": sensor} in (run.get("tags") or [])
    ]


def writer_steps(port: int) -> set[str]:
    """Step keys (op names) of assets in the DuckDB writer pool."""
    steps: set[str] = set()
    for node in graphql(port, POOLS_QUERY)["assetNodes"]:
        if WRITER_POOL in node["pools"]:
            steps.update(node["opNames"])
    return steps


def overlapping_writer_steps(run_list: list[dict], writers: set[str]) -> list[tuple[str, str]]:
    """Pairs of writer steps of different runs whose execution overlapped in time."""
    spans = [
        (step["startTime"], step["endTime"], f"{run['runId'][:8]}:{step['stepKey']}", run["runId"])
        for run in run_list
        for step in run["stepStats"] or []
        if step["stepKey"] in writers and step["startTime"] and step["endTime"]
    ]
    spans.sort()
    overlaps = []
    for i, (_start, end, name, run_id) in enumerate(spans):
        for other_start, _, other_name, other_run in spans[i + 1 :]:
            if other_start >= end - 0.001:
                break
            if other_run != run_id:
                overlaps.append((name, other_name))
    return overlaps


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def phases(result: LiveResult, run_list: list[dict]) -> dict[str, list[float]]:
    by_id = {run["runId"]: run for run in run_list}
    out: dict[str, list[float]] = {"sensor": [], "queue": [], "execute": []}
    for batch_id, run_id in result.run_of.items():
        run = by_id.get(run_id)
        if not run or not run["creationTime"] or not run["startTime"]:
            continue
        landed = result.landed[batch_id][1]
        created = max(run["creationTime"], landed)
        started = max(run["startTime"], created)
        out["sensor"].append(created - landed)
        out["queue"].append(started - created)
        out["execute"].append(result.seen_wall[batch_id] - started)
    return out


def report(
    args,
    info: dict,
    result: LiveResult,
    run_list: list[dict],
    lock_runs: list[str],
    seed_batches: int,
    startup_s: float,
    seed_s: float,
    overlaps: int = 0,
) -> str:
    values = list(result.latency.values())
    ok = sum(run["status"] == "SUCCESS" for run in run_list)
    failed = sum(run["status"] == "FAILURE" for run in run_list)
    other = len(run_list) - ok - failed

    def fmt(q):
        return f"{percentile(values, q):.1f}" if values else "n/a"

    lines = [
        f"Machine: {info['machine']}, {info['cores']} cores, {info['ram']} RAM, "
        f"Python {info['python']}, DuckDB {info['duckdb']}, Dagster {info['dagster']}. "
        + (
            f"Agents' model: a loopback OpenAI-compatible server answering after "
            f"{args.llm_latency:g} s."
            if args.llm_latency is not None
            else "Agents: offline tier (no model endpoint)."
        ),
        "",
        "| batches | events/batch | interval s | seed contacts | visible | missed "
        "| p50 s | p95 s | max s | runs ok / failed | lock errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {len(result.landed)} | {args.events_per_batch} | {args.interval:g} | "
        f"{args.contacts:,} | {len(values)} | {len(result.missed)} | {fmt(50)} | {fmt(95)} | "
        f"{max(values) if values else float('nan'):.1f} | {ok} / {failed}"
        f"{f' (+{other} other)' if other else ''} | {len(lock_runs)} |",
        "",
    ]
    split = phases(result, run_list)
    if split["sensor"]:
        lines += [
            "Where the time goes (per batch, from the run that loaded it; p50 / p95 / max s):",
            "",
            "| phase | p50 | p95 | max |",
            "|---|---:|---:|---:|",
        ]
        names = {
            "sensor": "landed -> run created (sensor tick)",
            "queue": "run created -> run started (queue, launch)",
            "execute": "run started -> visible (steps, publish, poll)",
        }
        for key, label in names.items():
            v = split[key]
            lines.append(
                f"| {label} | {percentile(v, 50):.1f} | {percentile(v, 95):.1f} | {max(v):.1f} |"
            )
        durations = [
            run["endTime"] - run["startTime"]
            for run in run_list
            if run["startTime"] and run["endTime"]
        ]
        loaded_by = len(set(result.run_of.values()))
        jobs = Counter(run["jobName"] for run in run_list)
        by_job = ", ".join(f"{count} {job}" for job, count in jobs.most_common())
        lines += [
            "",
            f"{len(run_list)} runs in all ({by_job}; the seed run included), {loaded_by} of "
            f"them loaded the live batches; run duration (start -> end) p50 "
            f"{statistics.median(durations):.1f} s, max {max(durations):.1f} s. "
            f"dagster dev ready in {startup_s:.0f} s; {seed_batches} seed batches published "
            f"{seed_s:.0f} s later. Published-copy polls: {result.watcher_polls} "
            f"({result.watcher_errors} retried). Writer steps of different runs that "
            f"overlapped in time: {overlaps}.",
        ]
    if result.missed:
        lines += [
            "",
            f"Missed (not visible within {args.timeout:.0f} s): {', '.join(result.missed)}",
        ]
    return "\n".join(lines)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=5_000, help="seed history size")
    parser.add_argument("--batches", type=int, default=25, help="live batches (at least 20)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between batches")
    parser.add_argument("--events-per-batch", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=180.0, help="a batch later is a miss")
    parser.add_argument("--keep", action="store_true", help="keep the temporary REVORCH_HOME")
    parser.add_argument(
        "--llm-latency",
        type=float,
        default=None,
        help="route agents to an OpenAI-compatible server on 127.0.0.1 answering after this many s",
    )
    args = parser.parse_args(argv)
    if args.batches < 20:
        parser.error("--batches must be at least 20")

    # Ctrl-C or SIGTERM stops dagster dev too (through the finally below); SIGINT is set
    # explicitly because a shell's background job starts with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    home = Path(tempfile.mkdtemp(prefix="revorch-latency-"))
    dev: DagsterDev | None = None
    llm = None
    try:
        env = prepare_home(home)
        if args.llm_latency is not None:
            llm = slow_model(args.llm_latency)
            env.update(REVORCH_LLM_BASE_URL=llm.base_url, OPENAI_API_KEY="bench")
        info = machine()
        seed_ids = seed_history(env, args.contacts)
        print(f"REVORCH_HOME={home}: {len(seed_ids)} seed batches", file=sys.stderr, flush=True)
        started = time.monotonic()
        dev = DagsterDev(env, home / "logs").start()
        dev.wait_ready()
        startup_s = time.monotonic() - started
        print(f"dagster dev ready on port {dev.port} in {startup_s:.0f} s", file=sys.stderr)
        ready = time.monotonic()
        wait_for_batches(published_path(env), seed_ids, timeout=600)
        seed_s = time.monotonic() - ready
        print(f"seed published after {seed_s:.0f} s; streaming", file=sys.stderr, flush=True)
        result = stream_and_measure(
            env,
            batches=args.batches,
            interval=args.interval,
            events_per_batch=args.events_per_batch,
            timeout=args.timeout,
            contacts=args.contacts,
            on_batch=lambda b: print(f"  landed {b}", file=sys.stderr, flush=True),
        )
        run_list = wait_runs_settled(dev.port, timeout=120)
        lock_runs = runs_with_lock_errors(dev.port, run_list)
        overlaps = overlapping_writer_steps(run_list, writer_steps(dev.port))
        if llm is not None:
            print(
                f"The model server answered {llm.total_requests} requests "
                f"(max {llm.max_in_flight} in flight).",
                file=sys.stderr,
            )
        print(
            report(
                args,
                info,
                result,
                run_list,
                lock_runs,
                len(seed_ids),
                startup_s,
                seed_s,
                overlaps=len(overlaps),
            )
        )
        return 0 if not result.missed and not lock_runs else 1
    except KeyboardInterrupt:
        print("interrupted; stopping dagster dev", file=sys.stderr)
        return 130
    finally:
        if dev is not None:
            dev.stop()
        if llm is not None:
            llm.stop()
        if args.keep:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
