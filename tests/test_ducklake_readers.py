"""Readers outside a run on the DuckLake backend: `revorch sql`, `revorch audit verify`, the
approvals inbox (over real HTTP) and the MCP server (a real client over stdio) read the live
catalog through revorch/state/access.py, so an action an MCP client proposes is in the inbox's
queue at once, with no publish in between; and two dispatchers in two processes at once,
beside an audited writer, send every action exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import duckdb
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from starlette.applications import Starlette

from conftest import CrmHome, sent_actions_due_again, serving_app
from revorch.server.inbox import InboxSettings, inbox_routes
from revorch.state import access

REVORCH = str(Path(sys.executable).with_name("revorch"))
TOKENS = {"alice": "alice-token-4f9c2a7e1b"}


def _revorch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [REVORCH, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )


def _propose_over_mcp(home: CrmHome, contact_id: str, company_id: str) -> tuple[dict, dict]:
    server = StdioServerParameters(
        command=REVORCH, args=["mcp", "--client", "desk"], env=os.environ.copy(), cwd=home.root
    )

    async def session() -> tuple[dict, dict]:
        async with (
            stdio_client(server, errlog=sys.stderr) as (read, write),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            account = await s.call_tool("get_account", {"company_id": company_id})
            held = await s.call_tool(
                "propose_action",
                {
                    "action_type": "send_follow_up",
                    "entity_type": "contact",
                    "entity_id": contact_id,
                    "why": "asked for a follow-up on the call",
                },
            )
            return account.structured_content, held.structured_content

    return anyio.run(session)


@pytest.mark.slow
def test_readers_see_an_mcp_proposal_on_ducklake_at_once(lake_home: CrmHome):
    with access.reading() as conn:
        company_id, contact_id, name = conn.execute(
            "SELECT co.id, c.id, co.name FROM contacts AS c JOIN companies AS co "
            "ON co.id = c.company_id WHERE NOT c._deleted AND co.tier <> 'strategic' "
            "ORDER BY c.id LIMIT 1"
        ).fetchone()
        audit_rows = conn.execute("SELECT count(*) FROM governance.audit_log").fetchone()[0]

    account, held = _propose_over_mcp(lake_home, contact_id, company_id)
    assert account["company"]["name"] == name
    assert held["status"] == "pending_approval"
    action_id = held["action_id"]

    # Nothing was published: the analysts' copy on disk does not have it ...
    published = lake_home.root / "published" / "revorch.duckdb"
    with duckdb.connect(str(published), read_only=True) as copy:
        assert copy.execute(
            "SELECT count(*) FROM governance.actions WHERE action_id = ?", [action_id]
        ).fetchone() == (0,)

    # ... and `revorch sql` reads the lake, where it waits for approval.
    query = f"SELECT action_id FROM governance.approval_queue WHERE action_id = '{action_id}'"
    sql = _revorch("sql", query, "--format", "csv")
    assert sql.returncode == 0, sql.stderr
    assert action_id in sql.stdout

    # The inbox, over HTTP, lists it.
    settings = InboxSettings(
        tokens=TOKENS, busy_wait_seconds=0.5, review_wait_seconds=120, page_size=5000
    )
    with (
        serving_app(Starlette(routes=inbox_routes(settings))) as base,
        httpx.Client(timeout=120) as client,
    ):
        inbox = f"{base}/approvals"
        form = client.get(f"{inbox}/login")
        csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
        client.post(f"{inbox}/login", data={"csrf": csrf, "token": TOKENS["alice"]})
        page = client.get(f"{inbox}/")
        assert page.status_code == 200
        assert action_id in page.text

    # The audit trail in the lake, with the server's rows (two calls, one proposal), is
    # anchored in the file and in Dagster: the server recorded its heads there.
    verified = _revorch("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "The audit trail is intact." in verified.stdout
    rows = int(verified.stdout.split(" audit rows")[0].replace(",", ""))
    assert rows > audit_rows + 2


DISPATCHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from resources import StateStore
    from revorch.governance.dispatch import dispatch
    from revorch.governance.policy import load_policy
    from revorch.governance.targets import OutboxFile
    from revorch import settings

    def lake_store():
        return StateStore(
            database=":memory:", backend="ducklake", clock="wall",
            catalog_dsn=settings.ducklake_catalog_dsn(), data_path=settings.ducklake_data_path(),
        )

    store = lake_store()
    report = dispatch(
        store.get_connection, load_policy(), OutboxFile(settings.outbox_path()),
        journal_path=settings.dispatch_journal_path(), run_id=sys.argv[1],
        anchor_path=settings.audit_anchor_path(),
    )
    print(dict(report.outcomes))
    """
)

AUDITED_WRITER = textwrap.dedent(
    """
    import sys
    from resources import StateStore
    from revorch.governance.audit import AuditEvent, audited
    from revorch.state.backend import retry_conflicts
    from revorch import settings

    def lake_store():
        return StateStore(
            database=":memory:", backend="ducklake", clock="wall",
            catalog_dsn=settings.ducklake_catalog_dsn(), data_path=settings.ducklake_data_path(),
        )

    store = lake_store()
    def one(i):
        with store.get_connection() as conn:
            with audited(conn, run_id="writer", anchor_path=settings.audit_anchor_path()) as t:
                t.append(AuditEvent("note", "test:writer", {"i": i}))
    for i in range(int(sys.argv[1])):
        retry_conflicts(lambda: one(i))
    """
)


@pytest.mark.slow
def test_two_dispatchers_at_once_on_ducklake_send_every_action_once(lake_home: CrmHome):
    """Two dispatcher processes and an audited writer at the same time: each transaction that
    conflicts runs again; no process fails, and every due action is sent exactly once."""
    due = sent_actions_due_again()
    assert due
    lake_home.outbox.unlink(missing_ok=True)
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, f"dispatcher-{n}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for n in (1, 2)
    ]
    processes.append(
        subprocess.Popen(
            [sys.executable, "-c", AUDITED_WRITER, "15"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    )
    try:
        outputs = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    sent = [json.loads(line)["action_id"] for line in lake_home.outbox.read_text().splitlines()]
    with access.reading() as conn:
        statuses = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions "
                "WHERE action_id IN (SELECT unnest(?))",
                [sorted(due)],
            ).fetchall()
        )
        dispatched = conn.execute(
            "SELECT action_id, count(*) FROM governance.audit_log WHERE event = 'dispatched' "
            "AND run_id IN ('dispatcher-1', 'dispatcher-2') GROUP BY ALL"
        ).fetchall()
        notes = conn.execute(
            "SELECT count(*) FROM governance.audit_log WHERE event = 'note'"
        ).fetchone()[0]
    assert len(sent) == len(set(sent))
    sent_now = {a for a, s in statuses.items() if s == "sent"}
    assert sent_now and sent_now <= set(sent), [out for out, _ in outputs]
    # Each sent action was dispatched once, by one of the two.
    assert {a for a, _ in dispatched} == sent_now
    assert {n for _, n in dispatched} == {1}
    assert notes == 15
