"""Revorch as an MCP server (`revorch mcp`), driven by the official SDK's client over a real
`revorch mcp` subprocess: stdio, and streamable HTTP on 127.0.0.1 with bearer tokens.

On a copy of the shared simulated CRM it shows: the reads return the state in the database;
a proposal goes into the outbox, is judged by the policy (allowed, held for a person, or
forbidden) and is only ever sent by the dispatcher after its verdict; a client without the
propose scope cannot propose; a request without a valid token is refused; every call is in
the audit trail with its client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from conftest import CrmHome, read_state
from orch_assets.governance.checks import SENT_WITHOUT_VERDICT_SQL
from revorch.agents.runtime import keep_open
from revorch.governance.audit import verify
from revorch.governance.dispatch import dispatch
from revorch.governance.policy import load_policy
from revorch.governance.targets import OutboxFile
from revorch.mcp.server import DESCRIPTIONS
from revorch.state import access

REVORCH = str(Path(sys.executable).with_name("revorch"))
PROPOSER_TOKEN = "proposer-token-0123456789abcdef"
READER_TOKEN = "reader-token-0123456789abcdefgh"
CONFIG = """
version: 1
clients:
  local: {scopes: [read]}
  desk: {scopes: [read, propose]}
  proposer: {token_env: TEST_MCP_PROPOSER_TOKEN, scopes: [read, propose]}
  reader: {token_env: TEST_MCP_READER_TOKEN, scopes: [read]}
"""


@pytest.fixture
def home(copy_crm, tmp_path: Path) -> CrmHome:
    crm = copy_crm("governed")
    (tmp_path / "mcp.yaml").write_text(CONFIG)
    return crm


# On DuckLake (``state_backend``) the server reads and writes this test's lake, where
# ``copy_crm`` put the home's state.
BACKEND_VARIABLES = ("REVORCH_STATE_BACKEND", "REVORCH_DUCKLAKE_CATALOG", "REVORCH_DUCKLAKE_DATA")


def server_env(home: CrmHome) -> dict[str, str]:
    return {
        **{name: os.environ[name] for name in BACKEND_VARIABLES if name in os.environ},
        **home.env(),
        "REVORCH_MCP_CONFIG": str(home.root.parent / "mcp.yaml"),
        "TEST_MCP_PROPOSER_TOKEN": PROPOSER_TOKEN,
        "TEST_MCP_READER_TOKEN": READER_TOKEN,
        "PATH": os.environ["PATH"],
    }


def facts(home: CrmHome) -> dict:
    """What the reads should return, from the state store itself, before the server starts."""
    with read_state(home.database) as conn:
        company_id, stage = conn.execute(
            "SELECT s.entity_id, s.stage FROM stages.entity_stages AS s "
            "JOIN subscriptions AS sub ON sub.company_id = s.entity_id "
            "WHERE s.entity_type = 'company' ORDER BY s.entity_id LIMIT 1"
        ).fetchone()
        deals = conn.execute(
            "SELECT count(*) FROM deals WHERE company_id = ? AND NOT _deleted", [company_id]
        ).fetchone()[0]
        deal_id, deal_stage, amount = conn.execute(
            "SELECT d.id, d.stage, d.amount FROM deals AS d JOIN agents.decisions AS a "
            "ON a.entity_id = d.id WHERE d.stage NOT IN ('closedwon', 'closedlost') "
            "ORDER BY d.id LIMIT 1"
        ).fetchone()
        deal_company = conn.execute("SELECT company_id FROM deals WHERE id = ?", [deal_id])
        deal_company = deal_company.fetchone()[0]
        decision_id, agent, next_action = conn.execute(
            "SELECT d.decision_id, d.agent, d.output->>'next_action' FROM agents.decisions AS d "
            "JOIN governance.actions AS a USING (decision_id) ORDER BY d.decision_id LIMIT 1"
        ).fetchone()
        contact_id = conn.execute(
            "SELECT c.id FROM contacts AS c JOIN companies AS co ON co.id = c.company_id "
            "WHERE NOT c._deleted AND co.tier <> 'strategic' ORDER BY c.id LIMIT 1"
        ).fetchone()[0]
        history = conn.execute(
            "SELECT count(*) FROM governance.company_history(?)", [company_id]
        ).fetchone()[0]
        audit_rows = conn.execute("SELECT count(*) FROM governance.audit_log").fetchone()[0]
    return locals()


def stdio_session(home: CrmHome, client: str):
    server = StdioServerParameters(
        command=REVORCH, args=["mcp", "--client", client], env=server_env(home), cwd=home.root
    )
    return stdio_client(server, errlog=sys.stderr)


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content)


def test_stdio_reads_return_the_state_and_proposals_are_judged(home: CrmHome) -> None:
    expected = facts(home)
    outbox_before = home.outbox.read_text() if home.outbox.exists() else ""

    async def session() -> dict:
        seen: dict = {}
        async with stdio_session(home, "desk") as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            tools = (await s.list_tools()).tools
            seen["descriptions"] = {tool.name: tool.description for tool in tools}
            seen["account"] = await s.call_tool(
                "get_account", {"company_id": expected["company_id"]}
            )
            seen["deal"] = await s.call_tool("get_deal", {"deal_id": expected["deal_id"]})
            seen["decision"] = await s.call_tool(
                "explain_decision", {"decision_id": expected["decision_id"]}
            )
            seen["history"] = await s.call_tool(
                "customer_history", {"company_id": expected["company_id"], "limit": 1000}
            )
            seen["funnel"] = await s.call_tool("get_funnel", {})
            seen["resource"] = await s.read_resource(f"revorch://accounts/{expected['company_id']}")
            seen["unknown"] = await s.call_tool("get_deal", {"deal_id": "no-such-deal"})
            propose = {"why": "the champion went quiet after the pricing call"}
            seen["forbidden"] = await s.call_tool(
                "propose_action",
                propose
                | {
                    "action_type": "offer_discount",
                    "entity_type": "deal",
                    "entity_id": expected["deal_id"],
                    "discount_pct": 40,
                },
            )
            seen["held"] = await s.call_tool(
                "propose_action",
                propose
                | {
                    "action_type": "send_follow_up",
                    "entity_type": "contact",
                    "entity_id": expected["contact_id"],
                },
            )
            seen["allowed"] = await s.call_tool(
                "propose_action",
                propose
                | {
                    "action_type": "notify_csm",
                    "entity_type": "company",
                    "entity_id": expected["company_id"],
                },
            )
            seen["again"] = await s.call_tool(
                "propose_action",
                propose
                | {
                    "action_type": "notify_csm",
                    "entity_type": "company",
                    "entity_id": expected["company_id"],
                },
            )
            seen["not_mcp"] = await s.call_tool(
                "propose_action",
                propose
                | {
                    "action_type": "update_crm_field",
                    "entity_type": "contact",
                    "entity_id": expected["contact_id"],
                },
            )
        return seen

    seen = anyio.run(session)

    # The tools are the ones in the code, with the descriptions written there.
    assert seen["descriptions"] == DESCRIPTIONS
    # Reads return the state in the database.
    account = seen["account"].structured_content
    assert account["company"]["id"] == expected["company_id"]
    assert account["lifecycle_stage"]["stage"] == expected["stage"]
    assert len(account["deals"]) == expected["deals"]
    assert account["subscriptions"]
    deal = seen["deal"].structured_content
    assert (deal["deal"]["stage"], deal["deal"]["amount"]) == (
        expected["deal_stage"],
        expected["amount"],
    )
    assert deal["decisions"]
    decision = seen["decision"].structured_content
    assert decision["decision"]["agent"] == expected["agent"]
    assert decision["decision"]["output"]["next_action"] == expected["next_action"]
    assert decision["actions"] and all(a["verdict"] for a in decision["actions"])
    # The policy's verdict, or its withholding for a held-out entity (a holdout), is on the trail.
    assert any(event["event"] in ("verdict", "withheld") for event in decision["trail"])
    # On the file the server reads the published copy, made before it started; on DuckLake it
    # reads the lake live, where its own earlier calls about the company are already audited.
    events = seen["history"].structured_content["events"]
    own = [event["detail"]["tool"] for event in events if event["kind"] == "mcp_call"]
    about_it = ["get_account"] + ["get_deal"] * (expected["deal_company"] == expected["company_id"])
    assert own == (about_it if access.is_lake() else [])
    assert len(events) == min(expected["history"] + len(own), 1000)
    assert "Funnel" in text_of(seen["funnel"])
    assert json.loads(seen["resource"].contents[0].text)["company"]["id"] == expected["company_id"]
    assert seen["unknown"].is_error and "no deal 'no-such-deal'" in text_of(seen["unknown"])

    # Each proposal was judged by the policy at once, and none was sent by the server.
    forbidden = seen["forbidden"].structured_content
    assert forbidden["status"] == "forbidden"
    assert "discounts_above_25_percent_are_forbidden" in forbidden["verdict_rules"]
    held = seen["held"].structured_content
    assert held["status"] == "pending_approval"
    assert "model_written_customer_facing_needs_approval" in held["verdict_rules"]
    allowed = seen["allowed"].structured_content
    assert allowed["status"] == "ready" and allowed["verdict"] == "allow"
    assert seen["again"].structured_content["action_id"] == allowed["action_id"]
    assert seen["not_mcp"].is_error and "may propose" in text_of(seen["not_mcp"])
    outbox_after = home.outbox.read_text() if home.outbox.exists() else ""
    assert outbox_after == outbox_before

    ids = {
        name: seen[name].structured_content["action_id"]
        for name in ("forbidden", "held", "allowed")
    }
    with home.connect() as conn:
        # In the outbox the agents' proposals go through, with the client's words kept apart.
        rows = dict(
            conn.execute(
                "SELECT action_id, source FROM governance.actions WHERE list_contains(?, action_id)",
                [list(ids.values())],
            ).fetchall()
        )
        assert rows == dict.fromkeys(ids.values(), "mcp")
        payload = json.loads(
            conn.execute(
                "SELECT payload FROM governance.actions WHERE action_id = ?", [ids["held"]]
            ).fetchone()[0]
        )
        assert payload["model_text"] == {
            "written_by": "mcp:desk",
            "untrusted": True,
            "reasons": ["the champion went quiet after the pricing call"],
        }
        assert payload["to"]["owner_id"]  # the recipient comes from the CRM
        held_in_queue = conn.execute(
            "SELECT count(*) FROM governance.approval_queue WHERE action_id = ?", [ids["held"]]
        ).fetchone()[0]
        assert held_in_queue == 1

        # The dispatcher sends what the policy allows, and only that.
        dispatch(
            keep_open(conn),
            load_policy(),
            OutboxFile(home.outbox),
            journal_path=home.root / "journal.sqlite3",
            run_id="dispatch-after-mcp",
            anchor_path=home.anchor,
        )
        statuses = dict(
            conn.execute(
                "SELECT action_id, status FROM governance.actions WHERE list_contains(?, action_id)",
                [list(ids.values())],
            ).fetchall()
        )
        assert statuses == {
            ids["forbidden"]: "forbidden",
            ids["held"]: "pending_approval",
            ids["allowed"]: "sent",
        }
        assert conn.execute(SENT_WITHOUT_VERDICT_SQL).fetchall() == []
        sent = [json.loads(line)["action_id"] for line in home.outbox.read_text().splitlines()]
        assert ids["allowed"] in sent and ids["held"] not in sent and ids["forbidden"] not in sent

        # Every call is in the audit trail with its client, and the chain is intact.
        calls = conn.execute(
            "SELECT detail->>'tool', detail->>'outcome', actor FROM governance.audit_log "
            "WHERE event = 'mcp_call' ORDER BY seq"
        ).fetchall()
        assert [tool for tool, _, _ in calls] == [
            "get_account",
            "get_deal",
            "explain_decision",
            "customer_history",
            "get_funnel",
            "resource:account",
            "get_deal",
            *["propose_action"] * 5,
        ]
        assert {actor for _, _, actor in calls} == {"mcp:desk"}
        assert [outcome for _, outcome, _ in calls].count("failed") == 2
        proposed_by = conn.execute(
            "SELECT DISTINCT actor FROM governance.audit_log WHERE event = 'proposed' "
            "AND list_contains(?, action_id)",
            [list(ids.values())],
        ).fetchall()
        assert proposed_by == [("mcp:desk",)]
        assert not verify(conn, home.anchor).problems


@contextmanager
def http_server(home: CrmHome) -> Iterator[str]:
    """`revorch mcp --http --port 0` in its own process group; yields the endpoint's URL."""
    process = subprocess.Popen(
        [REVORCH, "mcp", "--http", "--port", "0"],
        env=server_env(home),
        cwd=home.root,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("MCP endpoint at http://127.0.0.1:"), line
        yield line.split()[3].rstrip(";")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def http_session(url: str, token: str):
    client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return client, streamable_http_client(url, http_client=client)


def test_http_needs_a_token_and_scopes_decide_who_proposes(home: CrmHome) -> None:
    expected = facts(home)
    follow_up = {
        "action_type": "send_follow_up",
        "entity_type": "deal",
        "entity_id": expected["deal_id"],
        "why": "pricing questions are still open",
    }

    async def as_client(url: str, token: str) -> dict:
        seen = {}
        http, transport = http_session(url, token)
        async with http, transport as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            seen["deal"] = await s.call_tool("get_deal", {"deal_id": expected["deal_id"]})
            seen["proposal"] = await s.call_tool("propose_action", follow_up)
        return seen

    with http_server(home) as url:
        for headers in ({}, {"Authorization": "Bearer not-a-token-of-anyone-here"}):
            refused = httpx.post(
                url,
                headers=headers | {"Accept": "application/json, text/event-stream"},
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            )
            assert refused.status_code == 401
        reader = anyio.run(as_client, url, READER_TOKEN)
        proposer = anyio.run(as_client, url, PROPOSER_TOKEN)

    assert reader["deal"].structured_content["deal"]["id"] == expected["deal_id"]
    assert reader["proposal"].is_error
    assert "does not hold the propose scope" in text_of(reader["proposal"])
    assert proposer["deal"].structured_content == reader["deal"].structured_content
    action = proposer["proposal"].structured_content
    assert action["status"] == "pending_approval"  # customer-facing: a person decides

    with read_state(home.database) as conn:
        proposals = conn.execute(
            "SELECT action_id, status FROM governance.actions WHERE source = 'mcp'"
        ).fetchall()
        assert proposals == [(action["action_id"], "pending_approval")]
        calls = conn.execute(
            "SELECT actor, detail->>'tool', detail->>'outcome', detail->>'transport' "
            "FROM governance.audit_log WHERE event = 'mcp_call' ORDER BY seq"
        ).fetchall()
        assert calls == [
            ("mcp:reader", "get_deal", "ok", "http"),
            ("mcp:reader", "propose_action", "refused", "http"),
            ("mcp:proposer", "get_deal", "ok", "http"),
            ("mcp:proposer", "propose_action", "ok", "http"),
        ]
        # Nothing else was written: the refused requests reached no tool.
        rows = conn.execute("SELECT count(*) FROM governance.audit_log").fetchone()[0]
        assert rows == expected["audit_rows"] + len(calls) + 2  # + proposed, verdict


def test_stdio_client_is_read_only_by_default(home: CrmHome) -> None:
    expected = facts(home)

    async def session():
        async with stdio_session(home, "local") as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            return await s.call_tool(
                "propose_action",
                {
                    "action_type": "notify_csm",
                    "entity_type": "company",
                    "entity_id": expected["company_id"],
                    "why": "renewal is close",
                },
            )

    result = anyio.run(session)
    assert result.is_error and "mcp:" not in text_of(result)
    assert "does not hold the propose scope" in text_of(result)
    with read_state(home.database) as conn:
        assert (
            conn.execute("SELECT count(*) FROM governance.actions WHERE source = 'mcp'").fetchone()[
                0
            ]
            == 0
        )
        assert conn.execute(
            "SELECT actor, detail->>'outcome' FROM governance.audit_log WHERE event = 'mcp_call'"
        ).fetchall() == [("mcp:local", "refused")]


def test_the_command_refuses_a_non_loopback_host_and_an_unknown_client(capsys) -> None:
    from revorch.cli import main

    assert main(["mcp", "--http", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "listens on 127.0.0.1, localhost, ::1 only, not 0.0.0.0" in capsys.readouterr().err
    assert main(["mcp", "--client", "nobody"]) == 2
    assert "no MCP client 'nobody'" in capsys.readouterr().err
