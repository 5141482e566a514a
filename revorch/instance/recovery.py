"""Recover runs whose process died (kill -9, out of memory, a reboot) without a person.

A run that dies keeps its Dagster status (STARTED) and the concurrency-pool slots its steps
claimed, so every later run waits forever for the single ``duckdb_writer`` slot. Dagster's run
monitoring (enabled in dagster.yaml) frees slots of runs that have ended, but it cannot tell
that a local run worker died (the default run launcher has no health check) and it needs the
daemon, which an in-process ``revorch`` command does not have. ``recover_abandoned_runs``
closes that gap: the CLI calls it before every run and a sensor calls it under the daemon.

A run's process is known from the tags ``in_process_run_tags`` puts on CLI runs (host, pid and the
process's start, so a reused pid is not taken for the run), or, for runs the daemon launched,
from the run worker's own engine event "Started process for run (pid: N)". Only runs of this
host are judged; a run whose process cannot be identified is left alone.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

HOST_TAG = "revorch/host"
PID_TAG = "revorch/pid"
PROCESS_TAG = "revorch/process"

# Dagster's default run launcher records which code server started the run under this tag.
_GRPC_INFO_TAG = ".dagster/grpc_info"
_STARTED_PROCESS = "Started process for run"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}
# /proc/stat's boot time is whole seconds: allow for it when comparing start times.
_CLOCK_SLACK_SECONDS = 2.0
_HAS_PROC = Path("/proc/self/stat").exists()
# Field 22 of /proc/PID/stat, the start time in clock ticks after boot (index after the name).
_START_TICKS = 19

_JUDGED_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_ENDED = {
    dg.DagsterRunStatus.SUCCESS: "succeeded",
    dg.DagsterRunStatus.FAILURE: "failed",
    dg.DagsterRunStatus.CANCELED: "canceled",
}


@dataclass(frozen=True)
class RecoveredRun:
    """What was done for one run whose process is gone or that still held pool slots."""

    run_id: str
    reason: str
    marked: str | None = None
    freed_slots: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        done = [f"marked {self.marked}"] if self.marked else []
        done += [
            f"freed {n} {pool} slot{'s' if n > 1 else ''}" for pool, n in self.freed_slots.items()
        ]
        return f"Recovered run {self.run_id[:8]} ({self.reason}): {', '.join(done)}"


def in_process_run_tags() -> dict[str, str]:
    """Tags for a run this process executes itself: they name the process that owns it.

    The daemon's run retries are turned off for it: the daemon cannot launch a run that has no
    code location, and the command reports the failure to its user anyway.
    """
    pid = os.getpid()
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), "dagster/max_retries": "0"}
    identity = _process_identity(pid)
    if identity:
        tags[PROCESS_TAG] = identity
    return tags


def process_claim_key(prefix: str) -> str:
    """A pool step key that names this process (``prefix@host:pid:identity``): a command that
    claims the writer before its run exists (revorch/instance/writer.py) is not taken for a
    deleted run while it lives, and is freed once it is gone."""
    pid = os.getpid()
    return f"{prefix}@{socket.gethostname()}:{pid}:{_process_identity(pid) or ''}"


def _claimed_by_live_process(step_key: str) -> bool:
    _, at, owner = step_key.partition("@")
    host, _, rest = owner.partition(":")
    pid, _, identity = rest.partition(":")
    if not at or host != socket.gethostname() or not pid.isdigit():
        return False
    return _process_alive(int(pid), identity=identity or None)


def recover_abandoned_runs(instance: dg.DagsterInstance) -> list[RecoveredRun]:
    """Fail the unfinished runs of this host whose process is gone, and free every pool slot
    held by a run that can no longer release it. Returns what was recovered."""
    recovered: dict[str, RecoveredRun] = {}
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_JUDGED_STATUSES)):
        run = record.dagster_run
        pid = _dead_owner(instance, run)
        if pid is None:
            continue
        # Re-read: the process may have finished the run just before it exited.
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.is_finished:
            continue
        reason = f"process {pid} is gone"
        message = (
            f"Revorch's recovery: the process that ran this run (pid {pid}) is gone "
            "(killed, out of memory or a reboot); its concurrency slots are freed."
        )
        if current.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(current, message)
            recovered[run.run_id] = RecoveredRun(run.run_id, reason, "canceled")
        else:
            instance.report_run_failed(current, message)
            recovered[run.run_id] = RecoveredRun(run.run_id, reason, "failed")

    for run_id, (pools, step_keys) in _slot_holders(instance).items():
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            continue
        if run is None and any(_claimed_by_live_process(key) for key in step_keys):
            continue  # a command that holds the writer for a run it is about to start
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        claimed = Counter({pool: n for pool, n in pools.items() if n})
        if run_id in recovered:
            recovered[run_id].freed_slots.update(claimed)
        elif claimed:
            reason = f"already {_ENDED[run.status]}" if run else "run deleted"
            recovered[run_id] = RecoveredRun(run_id, reason, freed_slots=claimed)
    return list(recovered.values())


def _slot_holders(instance: dg.DagsterInstance) -> dict[str, tuple[Counter[str], set[str]]]:
    """Per run id, the slots it has claimed in each pool (0 for a run that only waits), and
    the step keys of its claims."""
    storage = instance.event_log_storage
    holders: dict[str, tuple[Counter[str], set[str]]] = {}
    if not storage.supports_global_concurrency_limits:
        return holders
    for pool, info in storage.get_concurrency_infos(list(storage.get_concurrency_keys())).items():
        for step in info.pending_steps:
            pools, keys = holders.setdefault(step.run_id, (Counter(), set()))
            pools[pool] += 0
            keys.add(step.step_key)
        for slot in info.claimed_slots:
            pools, keys = holders.setdefault(slot.run_id, (Counter(), set()))
            pools[pool] += 1
            keys.add(slot.step_key)
    return holders


def _dead_owner(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of the run's process if it is on this host and is gone, else None."""
    if PID_TAG in run.tags:
        if run.tags.get(HOST_TAG) != socket.gethostname():
            return None
        pid = int(run.tags[PID_TAG])
        alive = _process_alive(pid, identity=run.tags.get(PROCESS_TAG))
        return None if alive else pid

    # A run the daemon launched: its worker logs its pid; judged if its code server is local.
    grpc_host = json.loads(run.tags.get(_GRPC_INFO_TAG, "{}")).get("host")
    if grpc_host not in {*_LOCAL_HOSTS, socket.gethostname()}:
        return None
    started = [
        entry
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        if entry.message.startswith(_STARTED_PROCESS)
        and "pid" in entry.dagster_event.engine_event_data.metadata
    ]
    if not started:
        return None
    pid = int(started[-1].dagster_event.engine_event_data.metadata["pid"].value)
    alive = _process_alive(pid, started_by=started[-1].timestamp)
    return None if alive else pid


def _process_alive(
    pid: int, *, identity: str | None = None, started_by: float | None = None
) -> bool:
    """Whether process ``pid`` runs and is the one meant: the same identity (see
    ``_process_identity``), or started no later than ``started_by`` (a later one reuses the pid)."""
    fields = _proc_stat(pid)
    if fields is None:
        # Without /proc (not Linux) a process's start is unknown: any process with the pid counts.
        return not _HAS_PROC and _exists(pid)
    if identity is not None:
        return _identity(fields) == identity
    if started_by is not None:
        return _started_at(fields) <= started_by + _CLOCK_SLACK_SECONDS
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name; None if no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # A zombie has exited and only waits for its parent to collect its exit status.
    return None if fields[0] in ("Z", "X") else fields


def _process_identity(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return None if fields is None else _identity(fields)


def _identity(fields: list[str]) -> str:
    """Boot id and start tick of a process: unique on this machine, across reboots."""
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot_id}/{fields[_START_TICKS]}"


def _started_at(fields: list[str]) -> float:
    """When a process started, in Unix time."""
    boot_time = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot_time + int(fields[_START_TICKS]) / os.sysconf("SC_CLK_TCK")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
