"""The agents configuration (config/agents.yaml), validated when it is loaded."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from revorch.agents.features import ModelsConfig
from revorch.agents.scoring import ScoringConfig
from revorch.config_file import CONFIG_DIR, load_yaml_model
from revorch.mcp.client import McpServerSettings, McpToolCall

DEFAULT_PATH = CONFIG_DIR / "agents.yaml"
AGENT_NAMES = (
    "lead_qualification",
    "deal_risk",
    "ticket_triage",
    "renewal_risk",
    "onboarding_plan",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    input: float = Field(ge=0)
    cached_input: float = Field(ge=0)
    output: float = Field(ge=0)

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """USD for one call; cached tokens are part of the prompt tokens."""
        fresh = max(prompt_tokens - cached_tokens, 0)
        return (
            fresh * self.input + cached_tokens * self.cached_input + completion_tokens * self.output
        ) / 1_000_000


class Limits(_Strict):
    requests_per_minute: int = Field(gt=0)
    tokens_per_minute: int = Field(gt=0)
    max_concurrency: int = Field(gt=0)
    timeout_seconds: float = Field(gt=0)
    max_retries: int = Field(ge=0)
    # Consecutive failed calls (timeouts, lost connections, 5xx, 429 after their retries) that
    # switch the LLM tier off for the rest of a run.
    circuit_breaker_failures: int = Field(default=5, gt=0)


class LlmWhen(_Strict):
    """Send an item to the LLM tier when the offline tier is unsure, or when it is worth a lot."""

    confidence_below: float | None = Field(default=None, ge=0, le=1)
    value_field: str | None = None
    value_at_least: float | None = None

    def wants_llm(self, confidence: float, item: dict) -> bool:
        if self.confidence_below is not None and confidence < self.confidence_below:
            return True
        if self.value_field and self.value_at_least is not None:
            value = item.get(self.value_field)
            return isinstance(value, int | float) and value >= self.value_at_least
        return False


class Budget(_Strict):
    per_run_usd: float = Field(ge=0)
    per_day_usd: float = Field(ge=0)


class AgentSettings(_Strict):
    prompt_version: str
    model: str
    llm_when: LlmWhen
    budget: Budget
    # Tools of outside MCP servers this agent calls for each record it sends to the LLM tier
    # (revorch/mcp/client.py); none by default. Their results are untrusted, like CRM text.
    mcp_tools: list[McpToolCall] = Field(default_factory=list)


class AgentsConfig(_Strict):
    version: int
    prices: dict[str, Price]
    limits: Limits
    agents: dict[str, AgentSettings]
    # Outside MCP servers the agents' ``mcp_tools`` may name.
    mcp_servers: dict[str, McpServerSettings] = Field(default_factory=dict)
    # What the offline models learn from and predict (revorch/agents/features.py); the
    # defaults are the fixed features and outcomes the models always had.
    models: ModelsConfig = ModelsConfig()
    # Calibration, the lead cuts and the baseline tolerance (revorch/agents/scoring.py).
    scoring: ScoringConfig = ScoringConfig()

    @model_validator(mode="after")
    def _agents_and_prices_are_known(self) -> AgentsConfig:
        for name, agent in self.agents.items():
            if name not in AGENT_NAMES:
                raise ValueError(f"unknown agent {name!r}; agents are {', '.join(AGENT_NAMES)}")
            if agent.model not in self.prices:
                raise ValueError(f"agent {name} uses model {agent.model!r}, which has no price")
            for call in agent.mcp_tools:
                if call.server not in self.mcp_servers:
                    raise ValueError(
                        f"agent {name} calls {call.tool} on MCP server {call.server!r}, "
                        "which mcp_servers does not list"
                    )
        return self


class AgentsConfigError(ValueError):
    pass


def load_agents_config(path: str | Path = DEFAULT_PATH, *, text: str | None = None) -> AgentsConfig:
    return load_yaml_model(path, AgentsConfig, AgentsConfigError, "agents config", text=text)
