"""Governance writers at the same time on DuckLake: two reviews at once are both recorded
(a commit that conflicts runs again), and two dispatchers with separate journals, as on two
machines, never send one action twice (the claim of an action is in the lake)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import CrmHome, sent_actions_due_again
from revorch import settings
from revorch.governance.approvals import Review, ReviewError, review
from revorch.governance.audit import verify
from revorch.state import access


def _pending(conn, how_many: int) -> list[str]:
    """``how_many`` actions of the shared CRM put back in the approval queue."""
    ids = [
        a
        for (a,) in conn.execute(
            "SELECT action_id FROM governance.actions ORDER BY action_id LIMIT ?", [how_many]
        ).fetchall()
    ]
    conn.execute(
        "UPDATE governance.actions SET status = 'pending_approval', approved_by = NULL "
        "WHERE action_id IN (SELECT unnest(?))",
        [ids],
    )
    return ids


def test_two_reviews_at_once_on_ducklake_are_both_recorded_once(lake_home: CrmHome):
    """Two reviewers, each in its own connection, apply reviews at the same moment, round
    after round (both append to the audit chain, so their commits conflict): every review is
    recorded, each action reviewed once, an action both approve is approved by one of them
    (the other is told it is no longer waiting), and the chain verifies."""
    with access.lake_writing() as conn:
        ids = _pending(conn, 13)
    alice, bob, contested = ids[:6], ids[6:12], ids[12]
    anchor = settings.audit_anchor_path()
    start = threading.Barrier(2)
    refused: dict[str, list[str]] = {"alice": [], "bob": []}
    errors: list[BaseException] = []

    def reviewer(name: str, mine: list[str], decision: str) -> None:
        try:
            with access.lake_writing() as conn:
                for action_id in [*mine, contested]:
                    start.wait(timeout=60)
                    request = Review([action_id], decision, name, f"{name} decided")
                    try:
                        review(conn, request, run_id=f"review-{name}", anchor_path=anchor)
                    except ReviewError as error:
                        refused[name].append(str(error))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
            start.abort()

    threads = [
        threading.Thread(target=reviewer, args=("alice", alice, "approve")),
        threading.Thread(target=reviewer, args=("bob", bob, "reject")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    with access.reading() as conn:
        statuses = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions "
                "WHERE action_id IN (SELECT unnest(?))",
                [ids],
            ).fetchall()
        )
        reviews = conn.execute(
            "SELECT action_id, event, actor FROM governance.audit_log "
            "WHERE event IN ('approved', 'rejected') AND action_id IN (SELECT unnest(?))",
            [ids],
        ).fetchall()
        trail = verify(conn, anchor)
    assert {statuses[a] for a in alice} == {"approved"}
    assert {statuses[a] for a in bob} == {"rejected"}
    assert statuses[contested] in ("approved", "rejected")
    assert Counter(a for a, _, _ in reviews) == dict.fromkeys(ids, 1)
    # The one who came second was refused, and only for the contested action.
    assert sorted(len(r) for r in refused.values()) == [0, 1]
    assert "not waiting for approval" in [*refused["alice"], *refused["bob"]][0]
    assert trail.problems == [] and trail.intact


class _CountingReceiver(BaseHTTPRequestHandler):
    """A webhook target that counts what it receives (it does not de-duplicate) and holds
    the first request until ``release`` is set."""

    received: Counter
    first: threading.Event
    release: threading.Event

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received[body["action_id"]] += 1
        if not self.first.is_set():
            self.first.set()
            self.release.wait(timeout=120)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


DISPATCHER = textwrap.dedent(
    """
    import sys
    from resources import StateStore
    from revorch.governance.dispatch import dispatch
    from revorch.governance.policy import load_policy
    from revorch.governance.targets import Webhook
    from revorch import settings

    store = StateStore(
        database=":memory:", backend="ducklake", clock="wall",
        catalog_dsn=settings.ducklake_catalog_dsn(), data_path=settings.ducklake_data_path(),
    )
    report = dispatch(
        store.get_connection, load_policy(), Webhook(sys.argv[2], timeout_seconds=150),
        journal_path=settings.dispatch_journal_path(), run_id=sys.argv[1],
        anchor_path=settings.audit_anchor_path(),
    )
    print(dict(report.outcomes))
    """
)


@pytest.mark.slow
def test_dispatchers_with_separate_journals_never_send_an_action_twice(
    lake_home: CrmHome, tmp_path: Path
):
    """The first dispatcher has claimed its actions and is delivering them (its first
    request is held) when a second one, with its own journal (another machine), starts: the
    second leaves them to the first. The target receives each action once."""
    due = sent_actions_due_again()
    assert len(due) > 1
    handler = type(
        "Receiver",
        (_CountingReceiver,),
        {"received": Counter(), "first": threading.Event(), "release": threading.Event()},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/actions"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def start(name: str) -> subprocess.Popen:
        journal = tmp_path / f"{name}.dispatch-journal.sqlite3"
        return subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, name, url],
            env=env | {"REVORCH_DISPATCH_JOURNAL": str(journal)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    processes = [start("machine-1")]
    try:
        assert handler.first.wait(timeout=300), "the first dispatcher sent nothing"
        processes.append(start("machine-2"))
        second_out, second_err = processes[1].communicate(timeout=300)
        handler.release.set()
        first_out, first_err = processes[0].communicate(timeout=300)
    finally:
        handler.release.set()
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
        server.shutdown()
        server.server_close()
    assert processes[0].returncode == 0, first_err[-3000:]
    assert processes[1].returncode == 0, second_err[-3000:]
    received = handler.received
    assert [a for a, n in received.items() if n > 1] == [], (first_out, second_out)
    with access.reading() as conn:
        statuses = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions "
                "WHERE action_id IN (SELECT unnest(?))",
                [sorted(due)],
            ).fetchall()
        )
        dispatched = conn.execute(
            "SELECT action_id, run_id FROM governance.audit_log WHERE event = 'dispatched' "
            "AND run_id IN ('machine-1', 'machine-2')"
        ).fetchall()
        trail = verify(conn, settings.audit_anchor_path())
    sent = {a for a, s in statuses.items() if s == "sent"}
    assert sent and sent == set(received)
    assert Counter(a for a, _ in dispatched) == dict.fromkeys(sent, 1)
    assert {r for _, r in dispatched} == {"machine-1"}  # the second found them all claimed
    assert trail.problems == [] and trail.intact
    assert "sent" not in second_out  # its report: it sent nothing


@pytest.mark.slow
def test_a_lost_dispatchers_actions_are_released_in_the_lake_and_sent_once(
    lake_home: CrmHome, tmp_path: Path, capsys
):
    """A dispatcher on another machine claimed five actions and was lost with its journal:
    `revorch dispatch release` makes them due again in the lake, audited, once; a dispatcher
    with its own journal then sends each once."""
    from revorch.cli import main
    from revorch.governance.dispatch import dispatch
    from revorch.governance.policy import load_policy
    from revorch.governance.targets import OutboxFile

    with access.lake_writing() as conn:
        claimed = [
            a
            for (a,) in conn.execute(
                "SELECT action_id FROM governance.actions WHERE status = 'sent' "
                "ORDER BY action_id LIMIT 5"
            ).fetchall()
        ]
        conn.execute(
            "UPDATE governance.actions SET status = 'sending', sending_journal = 'lost-machine' "
            "WHERE action_id IN (SELECT unnest(?))",
            [claimed],
        )
    release = ["dispatch", "release", "--journal", "lost-machine", "--by", "carol"]
    assert main(release) == 0 and main(release) == 0
    assert main(["dispatch", "release"]) == 0
    out = capsys.readouterr().out
    assert "Released 5 actions" in out and "nothing to release; 5 were released" in out
    with access.reading() as conn:
        statuses = set(
            conn.execute(
                "SELECT status, sending_journal FROM governance.actions "
                "WHERE action_id IN (SELECT unnest(?))",
                [claimed],
            ).fetchall()
        )
        released = conn.execute(
            "SELECT action_id, actor FROM governance.audit_log "
            "WHERE event = 'dispatch_released' ORDER BY action_id"
        ).fetchall()
    assert statuses == {("retry", None)}
    assert released == [(a, "human:carol") for a in claimed]

    outbox = tmp_path / "machine-2" / "actions.jsonl"
    report = dispatch(
        access.lake_writing,
        load_policy(),
        OutboxFile(outbox),
        journal_path=tmp_path / "machine-2" / "journal.sqlite3",
        run_id="machine-2",
        anchor_path=settings.audit_anchor_path(),
    )
    written = [json.loads(line)["action_id"] for line in outbox.read_text().splitlines()]
    assert sorted(written) == claimed and report.outcomes["sent"] == len(claimed)
    with access.reading() as conn:
        assert verify(conn, settings.audit_anchor_path()).intact
