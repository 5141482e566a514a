"""Who may use Revorch's MCP server, and what each may do (config/mcp.yaml).

Each client has a name (recorded in the audit trail as ``mcp:<name>``), its scopes and, to
connect over HTTP, the environment variable that holds its bearer token. Scopes:

- ``read``: the tools and resources that read revenue state (the analysts' published copy);
- ``propose``: ``propose_action``, which puts an action in the outbox for the policy to judge.

A client without ``propose`` only reads. Over stdio the client is the one ``revorch mcp
--client NAME`` names (``local`` by default, read-only as shipped): whoever can start the
process speaks for it. Over HTTP a request without a known token is refused before any tool
runs.
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from revorch.config_file import CONFIG_DIR, load_yaml_model

DEFAULT_PATH = CONFIG_DIR / "mcp.yaml"
READ, PROPOSE = "read", "propose"
Scope = Literal["read", "propose"]
MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClientSettings(_Strict):
    scopes: list[Scope] = Field(default_factory=lambda: [READ])
    # The variable holding this client's bearer token; without it, the client is stdio only.
    token_env: str | None = None

    @field_validator("token_env")
    @classmethod
    def _is_a_variable_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV.fullmatch(value):
            raise ValueError(f"token_env {value!r} is not an environment variable name")
        return value


class McpConfig(_Strict):
    version: int
    clients: dict[str, ClientSettings]

    @model_validator(mode="after")
    def _names_are_plain(self) -> McpConfig:
        for name in self.clients:
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"client name {name!r}: use lower-case letters, digits and . _ - (at most 64)"
                )
        return self


class McpConfigError(ValueError):
    pass


def config_path() -> Path:
    return Path(os.environ.get("REVORCH_MCP_CONFIG", DEFAULT_PATH)).resolve()


def load_mcp_config(path: str | Path | None = None, *, text: str | None = None) -> McpConfig:
    return load_yaml_model(
        path or config_path(), McpConfig, McpConfigError, "MCP config", text=text
    )


@dataclass(frozen=True)
class Client:
    """A client as a call sees it: its name and what it may do."""

    name: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"mcp:{self.name}"


def client(config: McpConfig, name: str) -> Client:
    """The configured client ``name``; an unknown name is refused."""
    if name not in config.clients:
        raise McpConfigError(
            f"no MCP client {name!r} in the MCP config; known: {', '.join(sorted(config.clients))}"
        )
    return Client(name, frozenset(config.clients[name].scopes))


@dataclass(frozen=True)
class Tokens:
    """The HTTP clients' bearer tokens, read from the environment when the server starts."""

    by_client: dict[str, str]

    @classmethod
    def from_env(cls, config: McpConfig, environ: dict[str, str] | None = None) -> Tokens:
        env = os.environ if environ is None else environ
        tokens = {}
        for name, settings in config.clients.items():
            token = env.get(settings.token_env or "", "")
            if not token:
                continue
            if len(token) < MIN_TOKEN_LENGTH:
                raise McpConfigError(
                    f"{settings.token_env} (the token of MCP client {name}) is shorter than "
                    f"{MIN_TOKEN_LENGTH} characters; make one with: "
                    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            tokens[name] = token
        if len(set(tokens.values())) < len(tokens):
            raise McpConfigError("two MCP clients have the same token; give each its own")
        return cls(tokens)

    def client_of(self, token: str) -> str | None:
        """The client whose token this is, compared in constant time; None if nobody's."""
        found = None
        for name, expected in self.by_client.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                found = name
        return found
