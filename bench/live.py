"""Live mode as a user runs it: `revorch ui` plus `revorch simulate --live`, for minutes.

    .venv/bin/python bench/live.py                # 15 min, 1,000 contacts, a batch every 2 s
    .venv/bin/python bench/live.py --minutes 3 --approvals 3

In a fresh temporary REVORCH_HOME it starts `revorch ui` (dagster dev: webserver, daemon, the
landing-zone and approvals sensors) in its own session, then `revorch simulate --live` (the
history, then a batch of --events-per-batch changes every --interval seconds). Meanwhile:

- every 2 s it counts the runs waiting in Dagster's run queue (QUEUED or NOT_STARTED) and the
  runs in flight (STARTING, STARTED, CANCELING), by job;
- every --minutes / --approvals it approves one waiting action with `revorch approvals approve`
  (as a person would) and notes what the command said on stderr;
- change landed -> stages updated, per live batch: from the simulator printing "landed <batch>"
  (just after the batch's atomic rename) to the last stage asset materialized by the run that
  ingested it (`landing_batches.run_id` in the published copy; Dagster's event log);
- approved -> dispatched, per approval: from the moment the approve command starts to the
  first poll (every 0.2 s) that finds the action in the outbox file.

Batches landed before the seed history is in the stages are warm-up and reported apart. At the
end the simulator is stopped, runs get up to 3 minutes to finish, and `revorch ui` is stopped
(SIGTERM to its process group, SIGKILL after 30 s). Prints Markdown tables for bench/README.md.
Offline; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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
BIN = Path(sys.executable).parent
WAITING = ("QUEUED", "NOT_STARTED")
RUNNING = ("STARTING", "STARTED", "CANCELING")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Observed:
    landed: dict[str, float] = field(default_factory=dict)  # batch id -> landed (time.time())
    samples: list[tuple[float, int, int, Counter]] = field(default_factory=list)
    approvals: list[dict] = field(default_factory=list)


class Session:
    """`revorch ui` and `revorch simulate --live` on one REVORCH_HOME, stopped on exit."""

    def __init__(self, home: Path, port: int, logs: Path) -> None:
        self.home, self.port, self.logs = home, port, logs
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))},
            "REVORCH_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
        }
        self.processes: list[subprocess.Popen] = []

    def start(self, args: list[str], log: str, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(BIN / "revorch"), *args],
            env=self.env,
            cwd=self.home,
            start_new_session=True,  # dagster dev ignores signals from a non-interactive shell
            stderr=open(self.logs / log, "w"),  # noqa: SIM115 - closed with the process
            **kwargs,
        )
        self.processes.append(process)
        return process

    def wait_ui(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/server_info", timeout=5)
                return
            time.sleep(1)
        raise TimeoutError(f"revorch ui did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            # dagster dev can exit before its code server: end the whole session either way.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def read_landed(simulator: subprocess.Popen, observed: Observed) -> None:
    for line in simulator.stdout:
        now = time.time()
        text = line.strip()
        if text.startswith("landed "):
            observed.landed[text.removeprefix("landed ").removesuffix(".ndjson")] = now


def sample_runs(instance, observed: Observed, stop: threading.Event) -> None:
    import dagster as dg

    statuses = [dg.DagsterRunStatus[s] for s in (*WAITING, *RUNNING)]
    while not stop.wait(2):
        records = instance.get_run_records(dg.RunsFilter(statuses=statuses))
        waiting = [r for r in records if r.dagster_run.status.value in WAITING]
        running = [r for r in records if r.dagster_run.status.value in RUNNING]
        by_job = Counter(r.dagster_run.job_name for r in records)
        observed.samples.append((time.time(), len(waiting), len(running), by_job))


def pending_action(published: Path, taken: set[str]) -> str | None:
    import duckdb

    if not published.exists():
        return None
    try:
        with duckdb.connect(str(published), read_only=True) as conn:
            rows = conn.execute(
                "SELECT action_id FROM governance.approval_queue ORDER BY proposed_at DESC"
            ).fetchall()
    except duckdb.Error:
        return None
    return next((r[0] for r in rows if r[0] not in taken), None)


def in_outbox(outbox: Path, action_id: str) -> bool:
    if not outbox.exists():
        return False
    needle = f'"{action_id}"'
    return needle in outbox.read_text(errors="replace")


def approve(session: Session, action_id: str, observed: Observed, outbox: Path) -> None:
    record: dict = {"action_id": action_id, "asked": time.time()}
    observed.approvals.append(record)
    command = session.start(
        ["approvals", "approve", action_id, "--by", "bench"],
        f"approve-{action_id}.log",
        stdout=subprocess.DEVNULL,
    )
    returncode = command.wait(timeout=600)
    said = (session.logs / f"approve-{action_id}.log").read_text().strip()
    record |= {"command_done": time.time(), "rc": returncode, "said": said}
    while time.time() - record["asked"] < 600:
        if in_outbox(outbox, action_id):
            record["dispatched"] = time.time()
            return
        time.sleep(0.2)


def stage_times(instance, run_ids: set[str]) -> dict[str, float]:
    """Per run, when its last stage asset was materialized."""
    import dagster as dg

    done: dict[str, float] = {}
    for run_id in run_ids:
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            key = entry.dagster_event.asset_key
            if key.path[0] == "stages":
                done[run_id] = max(done.get(run_id, 0.0), entry.timestamp)
    return done


def loaded_by(published: Path) -> dict[str, str]:
    import duckdb

    with duckdb.connect(str(published), read_only=True) as conn:
        return dict(conn.execute("SELECT batch_id, run_id FROM landing_batches").fetchall())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--contacts", type=int, default=1_000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--events-per-batch", type=int, default=200)
    parser.add_argument("--approvals", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temporary REVORCH_HOME")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="revorch-live-"))
    home, logs = work / "home", work / "logs"
    home.mkdir()
    logs.mkdir()
    port = free_port()
    session = Session(home, port, logs)
    observed = Observed()
    stop = threading.Event()
    os.environ.update(REVORCH_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    load_before = os.getloadavg()
    started = time.time()
    try:
        session.start(["ui", "--port", str(port)], "ui.log", stdout=subprocess.DEVNULL)
        session.wait_ui(timeout=300)
        import dagster as dg

        instance = dg.DagsterInstance.get()
        simulator = session.start(
            [
                "simulate",
                "--contacts",
                str(args.contacts),
                "--live",
                "--interval",
                str(args.interval),
                "--events-per-batch",
                str(args.events_per_batch),
            ],
            "simulate.log",
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=read_landed, args=(simulator, observed), daemon=True).start()
        threading.Thread(target=sample_runs, args=(instance, observed, stop), daemon=True).start()
        streaming_from = time.time()
        published = home / "published" / "revorch.duckdb"
        outbox = home / "outbox" / "actions.jsonl"
        every = args.minutes * 60 / max(args.approvals, 1)
        next_approval = streaming_from + min(every, 120)
        approvers: list[threading.Thread] = []
        taken: set[str] = set()
        while time.time() - streaming_from < args.minutes * 60:
            if args.approvals and time.time() >= next_approval:
                action = pending_action(published, taken)
                if action:
                    taken.add(action)
                    thread = threading.Thread(
                        target=approve, args=(session, action, observed, outbox), daemon=True
                    )
                    thread.start()
                    approvers.append(thread)
                    next_approval += every
            time.sleep(1)
        streamed_until = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(simulator.pid, signal.SIGINT)
        simulator.wait(timeout=60)
        for thread in approvers:
            thread.join(timeout=300)
        # Let the lanes take what landed last.
        deadline = time.time() + 180
        while time.time() < deadline:
            active = instance.get_run_records(
                dg.RunsFilter(statuses=[dg.DagsterRunStatus[s] for s in (*WAITING, *RUNNING)])
            )
            if not active and not list((home / "landing" / "incoming").glob("*.ndjson")):
                break
            time.sleep(2)
        stop.set()
        runs = instance.get_run_records(dg.RunsFilter(created_after=None))
        loaded = loaded_by(published)
        times = stage_times(instance, set(loaded.values()))
    finally:
        stop.set()
        session.stop()
    load_after = os.getloadavg()
    report(args, observed, runs, loaded, times, streaming_from, streamed_until, started)
    print(f"\nload average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"home: {home} (logs in {logs})" if args.keep else f"logs were in {logs}")
    if not args.keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return 0


def report(args, observed, runs, loaded, times, streaming_from, streamed_until, started) -> None:
    first_stages = min(times.values()) if times else float("inf")
    latencies, warmup, missing = [], 0, []
    for batch, landed in observed.landed.items():
        run_id = loaded.get(batch)
        if run_id is None or run_id not in times:
            missing.append(batch)
        elif landed < first_stages:
            warmup += 1
        else:
            latencies.append(times[run_id] - landed)
    approvals = [a for a in observed.approvals if "dispatched" in a]
    to_dispatch = [a["dispatched"] - a["asked"] for a in approvals]
    command = [a["command_done"] - a["asked"] for a in observed.approvals if "command_done" in a]
    samples = [s for s in observed.samples if streaming_from <= s[0] <= streamed_until]
    queue = [s[1] for s in samples]
    flight = [s[2] for s in samples]
    by_job = Counter(r.dagster_run.job_name for r in runs)
    statuses = Counter(r.dagster_run.status.value for r in runs)
    durations: dict[str, list[float]] = {}
    for r in runs:
        if r.start_time and r.end_time:
            durations.setdefault(r.dagster_run.job_name, []).append(r.end_time - r.start_time)

    print(
        f"\n{args.minutes:g} min of `revorch simulate --contacts {args.contacts} --live "
        f"--interval {args.interval:g} --events-per-batch {args.events_per_batch}` under "
        f"`revorch ui`; {len(observed.landed)} live batches landed"
    )
    print("\n| measure | n | p50 | p95 | max | target |\n|---|---:|---:|---:|---:|---|")
    print(
        f"| run queue length (QUEUED + NOT_STARTED), sampled every 2 s | {len(queue)} | "
        f"{percentile(queue, 50):.0f} | {percentile(queue, 95):.0f} | {max(queue, default=0)} "
        "| never above 2 |"
    )
    print(
        f"| runs in flight (STARTING/STARTED/CANCELING) | {len(flight)} | "
        f"{percentile(flight, 50):.0f} | {percentile(flight, 95):.0f} | "
        f"{max(flight, default=0)} | |"
    )
    print(
        f"| change landed -> stages updated, s | {len(latencies)} | "
        f"{percentile(latencies, 50):.1f} | {percentile(latencies, 95):.1f} | "
        f"{max(latencies, default=float('nan')):.1f} | p95 <= 15 s |"
    )
    print(
        f"| approved -> dispatched, s | {len(to_dispatch)} | {percentile(to_dispatch, 50):.1f} | "
        f"{percentile(to_dispatch, 95):.1f} | {max(to_dispatch, default=float('nan')):.1f} "
        "| p95 <= 15 s |"
    )
    print(
        f"| `revorch approvals approve` command, s | {len(command)} | "
        f"{percentile(command, 50):.1f} | {percentile(command, 95):.1f} | "
        f"{max(command, default=float('nan')):.1f} | |"
    )
    print(
        f"\nWarm-up batches (landed before the seed reached the stages): {warmup}; "
        f"not ingested by the end: {len(missing)}; approvals not dispatched: "
        f"{len(observed.approvals) - len(approvals)} of {len(observed.approvals)}"
    )
    print(f"Runs by job: {dict(by_job)}; by status: {dict(statuses)}")
    for job, values in sorted(durations.items()):
        print(
            f"  {job}: {len(values)} runs, duration p50 {statistics.median(values):.1f} s, "
            f"max {max(values):.1f} s"
        )
    over_time = [
        (round(t - streaming_from), q, f) for t, q, f, _ in samples[:: max(1, len(samples) // 15)]
    ]
    print("Queue over time (s since streaming began, queued, in flight):", over_time)
    said = [a["said"] for a in observed.approvals if a.get("said")]
    if said:
        print("What `revorch approvals approve` said on stderr:")
        for text in said:
            print("  " + text.replace("\n", "\n  "))
    print(json.dumps({"elapsed_s": round(time.time() - started)}))


if __name__ == "__main__":
    sys.exit(main())
