"""Exactly-once dispatch under kill -9: a real dispatcher process, killed at seeded random
moments (while a webhook request is in flight, just after it was answered, while the outbox
file is appended to), then a last dispatch. Nothing is lost, nothing acts twice, and
the audit trail shows every attempt, the interrupted ones too. A torn outbox line is repaired.
A dispatcher lost for good with its journal: `revorch dispatch release` makes its actions due
again, once, audited, and the next dispatcher delivers each once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from revorch.cli import main
from revorch.governance.approvals import Review, review
from revorch.governance.audit import verify
from revorch.governance.dispatch import dispatch
from revorch.governance.journal import open_journal
from revorch.governance.policy import DEFAULT_PATH, load_policy
from revorch.governance.targets import OutboxFile
from sensors.approvals import approved_actions_sensor

ATTEMPT_EVENTS = ("dispatched", "dispatch_failed", "dispatch_interrupted")


def _env(home: Path, policy: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    return {**env, "REVORCH_HOME": str(home), "REVORCH_POLICY": str(policy), **extra}


def _revorch(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    # Its own process group, so the kill reaches everything it started.
    return subprocess.Popen(
        [sys.executable, "-m", "revorch.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill(process: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A webhook target on 127.0.0.1 in a thread; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/actions"


@pytest.fixture(scope="module")
def held_home(tmp_path_factory) -> tuple[Path, Path]:
    """A small simulated CRM after `revorch ingest`, under a policy that holds every action
    for approval, so the main run dispatches nothing and each test approves what it sends."""
    root = tmp_path_factory.mktemp("held")
    document = yaml.safe_load(DEFAULT_PATH.read_text())
    document["rules"].append({"name": "hold_everything", "verdict": "approve"})
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(document))
    home = root / ".revorch"
    env = _env(home, policy)
    for args in (("simulate", "--contacts", "200", "--seed", "7"), ("ingest",)):
        done = _revorch(*args, env=env, cwd=root)
        _out, err = done.communicate(timeout=600)
        assert done.returncode == 0, err
    return home, policy


@dataclass
class Crm:
    home: Path
    policy: Path
    approved: list[str]

    @property
    def database(self) -> Path:
        return self.home / "revorch.duckdb"

    @property
    def anchor(self) -> Path:
        return self.home / "audit" / "revorch.anchors.jsonl"

    @property
    def outbox(self) -> Path:
        return self.home / "outbox" / "actions.jsonl"

    def attempts(self) -> dict[str, list[tuple[str, int]]]:
        """Per action, its attempt events in the trail: (event, attempt number)."""
        with duckdb.connect(str(self.database), read_only=True) as conn:
            rows = conn.execute(
                "SELECT action_id, event, CAST(detail->>'attempt' AS INTEGER) "
                "FROM governance.audit_log WHERE list_contains(?, event) ORDER BY seq",
                [list(ATTEMPT_EVENTS)],
            ).fetchall()
        trail: dict[str, list[tuple[str, int]]] = {}
        for action_id, event, attempt in rows:
            trail.setdefault(action_id, []).append((event, attempt))
        return trail

    def statuses(self) -> dict[str, str]:
        with duckdb.connect(str(self.database), read_only=True) as conn:
            return dict(
                conn.execute(
                    "SELECT action_id, status FROM governance.actions "
                    "WHERE list_contains(?, action_id)",
                    [self.approved],
                ).fetchall()
            )

    def intact(self) -> bool:
        with duckdb.connect(str(self.database), read_only=True) as conn:
            return verify(conn, self.anchor).intact


def _approved_copy(held_home, folder: Path, count: int) -> Crm:
    """A copy of the held CRM with ``count`` actions approved through the real review."""
    home, policy = held_home
    shutil.copytree(home, folder / ".revorch")
    crm = Crm(folder / ".revorch", policy, [])
    with duckdb.connect(str(crm.database)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        waiting = [
            row[0]
            for row in conn.execute(
                "SELECT action_id FROM governance.actions WHERE status = 'pending_approval' "
                "ORDER BY action_id LIMIT ?",
                [count],
            ).fetchall()
        ]
        assert len(waiting) == count, "the small CRM must hold enough actions"
        review(conn, Review(waiting, "approve", "alice"), run_id="test", anchor_path=crm.anchor)
    crm.approved = waiting
    return crm


@dataclass
class Receiver:
    """A webhook receiver that honours Idempotency-Key: a key it has seen is answered 200 and
    not acted on again. It can kill the dispatcher at its k-th request, before answering it
    ("during") or a moment after ("after")."""

    requests: list[tuple[str, str]] = field(default_factory=list)  # (key, action_id in body)
    acted: Counter = field(default_factory=Counter)  # action_id -> times acted on
    kill_at: int = 0
    mode: str = "during"
    delay: float = 0.0
    victim: subprocess.Popen | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, key: str, body: dict) -> bool:
        """Record a request; False when the dispatcher was killed before the answer."""
        with self.lock:
            self.requests.append((key, body["action_id"]))
            if key not in {k for k, _ in self.requests[:-1]}:
                self.acted[body["action_id"]] += 1
            due = len(self.requests) == self.kill_at and self.victim is not None
        if due and self.mode == "during":
            _kill(self.victim)
            return False
        if due:
            threading.Timer(self.delay, _kill, [self.victim]).start()
        return True


@pytest.fixture
def receiver():
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if state.handle(self.headers["Idempotency-Key"], body):
                self.send_response(200)
                self.end_headers()

        def log_message(self, *args):
            pass

    server, url = _serve(Handler)
    yield state, url
    server.shutdown()


def _assert_every_attempt_in_the_trail(crm: Crm) -> dict[str, list[tuple[str, int]]]:
    trail = crm.attempts()
    for action_id in crm.approved:
        events = trail[action_id]
        # Attempts numbered 1..n with none missing; only the last one delivered.
        assert [n for _, n in events] == list(range(1, len(events) + 1)), events
        assert [e for e, _ in events].count("dispatched") == 1, events
        assert events[-1][0] == "dispatched", events
    return trail


def test_webhook_dispatch_killed_at_random_moments_loses_and_doubles_nothing(
    held_home, tmp_path, receiver
):
    state, url = receiver
    crm = _approved_copy(held_home, tmp_path, 16)
    env = _env(crm.home, crm.policy, REVORCH_WEBHOOK_URL=url)
    rng = random.Random(20261201)
    kills = []
    for round_ in range(3):
        state.kill_at = len(state.requests) + rng.randint(1, 4)
        state.mode = "during" if round_ == 0 else rng.choice(["during", "after"])
        state.delay = rng.uniform(0, 0.05)
        state.victim = process = _revorch("dispatch", env=env, cwd=tmp_path)
        process.communicate(timeout=600)
        assert process.returncode == -signal.SIGKILL, "the dispatcher should have been killed"
        kills.append(state.mode)
    state.victim = None
    last = _revorch("dispatch", env=env, cwd=tmp_path)
    out, err = last.communicate(timeout=600)
    assert last.returncode == 0, err
    # The killed dispatch's run is recovered first (its process is gone), then the rest is sent.
    *recovered, summary = out.splitlines()
    assert [line for line in recovered if line.startswith("Recovered run ")] == recovered, out
    assert len(recovered) == 1, out
    assert summary.startswith("sent "), out

    # 0 lost, 0 acted on twice: the receiver acted once on every approved action, no other.
    assert state.acted == Counter({a: 1 for a in crm.approved})
    assert all(key == action_id for key, action_id in state.requests)
    # Some were delivered again (an answer the killed dispatcher never got), under the same key,
    # but only those a kill cut short: each outcome was recorded before the next was tried.
    resent = len(state.requests) - len(crm.approved)
    assert 1 <= resent <= len(kills)
    assert set(crm.statuses().values()) == {"sent"}
    trail = _assert_every_attempt_in_the_trail(crm)
    interrupted = sum(e == "dispatch_interrupted" for events in trail.values() for e, _ in events)
    assert interrupted >= kills.count("during")
    # Every request the receiver saw is an attempt in the trail.
    seen = Counter(action_id for _, action_id in state.requests)
    assert all(seen[a] <= len(trail[a]) for a in crm.approved)
    assert crm.intact()


# The dispatcher as the asset runs it, without Dagster's start-up (seconds per process here),
# so the outbox test can afford several kills.
DISPATCH_SCRIPT = """
import duckdb, os, sys
from contextlib import contextmanager
from revorch import settings
from revorch.governance.dispatch import dispatch
from revorch.governance.policy import load_policy
from revorch.governance.targets import OutboxFile, Webhook

@contextmanager
def connect():
    with duckdb.connect(str(settings.database_path())) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        yield conn

url = os.environ.get("REVORCH_WEBHOOK_URL")
outbox = OutboxFile(settings.outbox_path(), batch_size=int(sys.argv[2]))
target = Webhook(url, timeout_seconds=120) if url else outbox
report = dispatch(connect, load_policy(settings.policy_path()), target,
                  journal_path=settings.dispatch_journal_path(), run_id=sys.argv[1],
                  anchor_path=settings.audit_anchor_path())
print(dict(report.outcomes))
"""


def _start_dispatcher(
    env: dict[str, str], cwd: Path, run_id: str, outbox_batch: int = 500
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DISPATCH_SCRIPT, run_id, str(outbox_batch)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_outbox_dispatch_killed_at_random_moments_writes_each_action_once(held_home, tmp_path):
    crm = _approved_copy(held_home, tmp_path, 40)
    env = _env(crm.home, crm.policy)
    rng = random.Random(7)

    def lines() -> int:
        return crm.outbox.read_bytes().count(b"\n") if crm.outbox.exists() else 0

    def start(run_id: str) -> subprocess.Popen:
        # Small groups, so that kills fall between, during and after appends.
        return _start_dispatcher(env, tmp_path, run_id, outbox_batch=rng.randint(1, 3))

    killed = 0
    for round_ in range(6):
        target = lines() + rng.randint(1, 5)
        process = start(f"killed-{round_}")
        while process.poll() is None and lines() < target:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.005))
        _kill(process)
        process.communicate(timeout=120)
        killed += process.returncode == -signal.SIGKILL
    assert killed >= 4, "most rounds should have been cut short"
    last = start("last")
    _out, err = last.communicate(timeout=120)
    assert last.returncode == 0, err

    written = [json.loads(line)["action_id"] for line in crm.outbox.read_text().splitlines()]
    assert Counter(written) == Counter({a: 1 for a in crm.approved})
    assert set(crm.statuses().values()) == {"sent"}
    _assert_every_attempt_in_the_trail(crm)
    assert crm.intact()


def test_the_state_store_is_free_while_a_target_keeps_the_dispatcher_waiting(held_home, tmp_path):
    crm = _approved_copy(held_home, tmp_path, 2)
    in_flight, release = threading.Event(), threading.Event()

    class Stalling(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            in_flight.set()
            release.wait(timeout=120)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server, url = _serve(Stalling)
    process = _start_dispatcher(
        _env(crm.home, crm.policy, REVORCH_WEBHOOK_URL=url), tmp_path, "slow"
    )
    try:
        assert in_flight.wait(timeout=120), process.stderr.read() if process.poll() else ""
        # Another process (this one) writes to the state store while a request hangs.
        with duckdb.connect(str(crm.database)) as conn:
            conn.execute("CREATE TABLE written_meanwhile AS SELECT 1 AS x")
    finally:
        release.set()
        _out, err = process.communicate(timeout=120)
        server.shutdown()
    assert process.returncode == 0, err
    assert set(crm.statuses().values()) == {"sent"}


class Crash(BaseException):
    """What kill -9 does to the dispatcher, in-process: it stops, mid-append."""


class TearingOutbox(OutboxFile):
    """Appends one action at a time, and half of its second action's line, then dies."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, batch_size=1)
        self.calls = 0

    def deliver(self, messages: list[dict]):
        self.calls += 1
        if self.calls < 2:
            return super().deliver(messages)
        line = json.dumps(messages[0], sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line[: len(line) // 2])
        raise Crash


def _recovery_requested() -> bool:
    result = approved_actions_sensor(
        dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral())
    )
    return isinstance(result, dg.RunRequest) and result.run_key.startswith("recover-")


def test_a_torn_last_outbox_line_is_set_aside_and_the_action_delivered_whole(
    held_home, tmp_path, monkeypatch
):
    crm = _approved_copy(held_home, tmp_path, 4)
    policy = load_policy(crm.policy)
    journal = tmp_path / "journal.sqlite3"
    monkeypatch.setenv("REVORCH_HOME", str(crm.home))
    monkeypatch.setenv("REVORCH_DISPATCH_JOURNAL", str(journal))
    conn = duckdb.connect(str(crm.database))
    conn.execute("SET TimeZone = 'UTC'")

    def run(target):
        return dispatch(
            lambda: nullcontext(conn),
            policy,
            target,
            journal_path=journal,
            run_id="torn",
            anchor_path=crm.anchor,
        )

    with pytest.raises(Crash):
        run(TearingOutbox(crm.outbox))
    torn = crm.outbox.read_bytes()
    assert not torn.endswith(b"\n")
    # The daemon's sensor sees the dead dispatcher's attempts, but not a live one's.
    assert _recovery_requested()
    with open_journal(journal):
        assert not _recovery_requested()
    report = run(OutboxFile(crm.outbox))
    assert not _recovery_requested()

    assert report.recovered == 2 and report.outcomes["sent"] == 4
    [side] = crm.outbox.parent.glob("actions.jsonl.torn-*")
    assert torn.endswith(side.read_bytes()) and side.read_bytes()
    written = [json.loads(line)["action_id"] for line in crm.outbox.read_text().splitlines()]
    assert Counter(written) == Counter({a: 1 for a in crm.approved})
    repaired = conn.execute(
        "SELECT detail->>'moved_to' FROM governance.audit_log WHERE event = 'outbox_repaired'"
    ).fetchall()
    assert repaired == [(str(side),)]
    conn.close()
    _assert_every_attempt_in_the_trail(crm)
    trail = crm.attempts()
    assert sum(("dispatch_interrupted", 1) in events for events in trail.values()) == 1
    assert crm.intact()


# -- `revorch dispatch release`: a dispatcher lost for good, its journal with it ------------


def _journal_files(journal: Path) -> list[Path]:
    return [p for p in journal.parent.iterdir() if p.name.startswith(journal.name)]


def _release_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["dispatch", "release", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(crm: Crm, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(crm.database), read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


@pytest.mark.file_only("the killed dispatcher's state store is a file (test_dispatch_crash.py)")
def test_a_lost_dispatchers_actions_are_released_once_and_delivered_once(
    held_home, tmp_path, receiver, monkeypatch, capsys
):
    state, url = receiver
    crm = _approved_copy(held_home, tmp_path, 6)
    lost = tmp_path / "machine-a" / "journal.sqlite3"
    other = tmp_path / "machine-b" / "journal.sqlite3"
    env = _env(crm.home, crm.policy, REVORCH_WEBHOOK_URL=url)

    # Machine A's dispatcher is killed while its third request is in flight.
    state.kill_at, state.mode = 3, "during"
    state.victim = process = _start_dispatcher(
        {**env, "REVORCH_DISPATCH_JOURNAL": str(lost)}, tmp_path, "lost"
    )
    process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL
    state.victim = None
    [(journal_id, stuck)] = _rows(
        crm,
        "SELECT sending_journal, count(*) FROM governance.actions "
        "WHERE status = 'sending' GROUP BY ALL",
    )
    assert stuck == len(crm.approved)
    delivered_before = Counter(state.acted)
    assert sum(delivered_before.values()) == 3

    # Machine B's dispatcher leaves another journal's actions alone.
    b = _start_dispatcher({**env, "REVORCH_DISPATCH_JOURNAL": str(other)}, tmp_path, "b-1")
    _out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err
    assert len(state.requests) == 3
    assert set(crm.statuses().values()) == {"sending"}

    # `revorch dispatch release` as on machine A (its journal is REVORCH_DISPATCH_JOURNAL).
    for name, value in {**env, "REVORCH_DISPATCH_JOURNAL": str(lost)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(crm.home / "dagster"))
    code, out, _ = _release_cli(capsys)
    [listed] = [line.split() for line in out.splitlines() if line.startswith(journal_id)]
    assert code == 0 and listed[1:3] == ["6", "actions"] and "machine's" in listed

    # On machine A the journal is still there: refused while its dispatcher holds it...
    with open_journal(lost, lock_timeout_seconds=5):
        code, _, err = _release_cli(capsys, "--journal", journal_id, "--by", "alice")
    assert code == 2 and "its dispatcher is running" in err
    # ... and while it holds an attempt to recover (the one the kill cut short).
    code, _, err = _release_cli(capsys, "--journal", journal_id, "--by", "alice")
    assert code == 2 and "run `revorch dispatch`" in err
    assert set(crm.statuses().values()) == {"sending"}

    # Machine A is lost for good, its journal with it.
    for path in _journal_files(lost):
        path.unlink()
    code, _, err = _release_cli(capsys, "--journal", journal_id, "--by", " ")
    assert code == 2 and "say who releases" in err
    code, out, err = _release_cli(capsys, "--journal", journal_id, "--by", "alice")
    assert code == 0, err
    assert out.startswith("Released 6 actions")
    assert set(crm.statuses().values()) == {"retry"}
    released = _rows(
        crm,
        "SELECT action_id, actor, detail->>'journal', seq FROM governance.audit_log "
        "WHERE event = 'dispatch_released' ORDER BY action_id",
    )
    assert [(a, who, j) for a, who, j, _ in released] == [
        (a, "human:alice", journal_id) for a in sorted(crm.approved)
    ]

    # Again: nothing changes, and it says why.
    code, out, err = _release_cli(capsys, "--journal", journal_id, "--by", "bob")
    assert code == 0, err
    assert "nothing to release; 6 were released by human:alice" in out
    assert (
        len(_rows(crm, "SELECT 1 FROM governance.audit_log WHERE event = 'dispatch_released'")) == 6
    )

    code, _, err = _release_cli(capsys, "--journal", "0123456789abcdef", "--by", "alice")
    assert (
        code == 2 and "no action was ever claimed by dispatcher journal '0123456789abcdef'" in err
    )

    # Machine B sends them now, each judged again, under its unchanged key.
    b = _start_dispatcher({**env, "REVORCH_DISPATCH_JOURNAL": str(other)}, tmp_path, "b-2")
    _out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err
    assert set(crm.statuses().values()) == {"sent"}
    assert all(key == action_id for key, action_id in state.requests)
    assert Counter(a for _, a in state.requests) == Counter(
        {a: 1 + delivered_before[a] for a in crm.approved}
    )
    assert state.acted == Counter({a: 1 for a in crm.approved})
    last_release = max(seq for *_, seq in released)
    judged = _rows(
        crm,
        "SELECT DISTINCT action_id FROM governance.audit_log WHERE event = 'verdict' "
        "AND (detail->>'stage') = 'dispatch' AND seq > ?",
        [last_release],
    )
    assert {a for (a,) in judged} == set(crm.approved)
    _assert_every_attempt_in_the_trail(crm)
    assert crm.intact()

    code, out, _ = _release_cli(capsys)
    assert code == 0 and out.startswith("0 dispatcher journals")
