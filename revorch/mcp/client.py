"""Agents as MCP clients: lookups in outside MCP servers (a CRM's own, say) for the records an
agent sends to its model.

config/agents.yaml lists the servers (``mcp_servers``) and, per agent, the tools it may call
(``mcp_tools``, none by default) with the record field each argument takes its value from.
The agent's code makes the calls, before the model is asked and with no state store
connection open; the model never chooses a tool, a server or an argument. What a tool returns
is untrusted text, like CRM free text: it goes into the record under ``lookups``, through the
same redaction (revorch/agents/redact.py) and inside the same escaped ``<record>`` as a
ticket's body, and whatever the model then answers is held to its schema, the policy and the
screen. Each server is reached with its own token (``token_env``), never with a token a
client gave Revorch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger("revorch.mcp.client")

# A lookup's text in a prompt is bounded, so it bounds what a call can cost.
MAX_RESULT_CHARS = 4000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpServerSettings(_Strict):
    """An outside MCP server: ``url`` (streamable HTTP) or ``command`` (stdio), not both."""

    url: str | None = None
    command: list[str] | None = None
    token_env: str | None = None  # the variable holding Revorch's own token for this server
    timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if (self.url is None) == (self.command is None):
            raise ValueError("an MCP server has a url (HTTP) or a command (stdio), one of them")
        if self.command is not None and not self.command:
            raise ValueError("an MCP server's command names a program")
        return self


class McpToolCall(_Strict):
    """One tool an agent calls for each record it sends to the LLM tier; ``arguments`` maps
    each of the tool's arguments to the record field that gives its value."""

    server: str
    tool: str
    arguments: dict[str, str] = Field(default_factory=dict)


def look_up(
    servers: dict[str, McpServerSettings], calls: list[McpToolCall], items: list[dict]
) -> list[list[dict]]:
    """For each item, what each call returned: ``{"server", "tool", "text"}``, or ``"error"``
    instead of ``"text"`` when the call failed (a lookup that fails leaves the decision to
    the record alone; it never stops the agent)."""
    import anyio

    found: list[list[dict]] = [[] for _ in items]
    for server_name in dict.fromkeys(call.server for call in calls):
        mine = [call for call in calls if call.server == server_name]
        try:
            results = anyio.run(_session, servers[server_name], mine, items)
        except Exception as failed:  # a server down or broken: no lookup from it this run
            log.warning("MCP server %s unavailable: %s", server_name, failed)
            error = {"error": f"server unavailable ({type(failed).__name__})"}
            results = [[error for _ in mine] for _ in items]
        for i, per_item in enumerate(results):
            for call, result in zip(mine, per_item, strict=True):
                found[i].append({"server": server_name, "tool": call.tool, **result})
    return found


async def _session(
    server: McpServerSettings, calls: list[McpToolCall], items: list[dict]
) -> list[list[dict]]:
    from mcp import ClientSession

    async with (
        _transport(server) as (read, write),
        ClientSession(read, write, read_timeout_seconds=server.timeout_seconds) as session,
    ):
        await session.initialize()
        results = []
        for item in items:
            per_item = []
            for call in calls:
                arguments = {name: item.get(field) for name, field in call.arguments.items()}
                answer = await session.call_tool(call.tool, arguments)
                text = "\n".join(getattr(block, "text", "") for block in answer.content)
                key = "error" if answer.is_error else "text"
                per_item.append({key: text[:MAX_RESULT_CHARS]})
            results.append(per_item)
        return results


@asynccontextmanager
async def _transport(server: McpServerSettings) -> AsyncIterator[Any]:
    token = os.environ.get(server.token_env, "") if server.token_env else ""
    if server.command is not None:
        from mcp import StdioServerParameters, stdio_client

        env = {server.token_env: token} if server.token_env and token else None
        command, *args = server.command
        parameters = StdioServerParameters(command=command, args=args, env=env)
        async with stdio_client(parameters) as streams:
            yield streams
        return
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=server.timeout_seconds) as http,
        streamable_http_client(server.url, http_client=http) as streams,
    ):
        yield streams


def with_lookups(item: dict, lookups: list[dict] | None) -> dict:
    """The record an agent sends to its model, with what its lookups returned."""
    return {**item, "lookups": lookups} if lookups else item
