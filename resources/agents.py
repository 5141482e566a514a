"""The agents' configuration and their LLM endpoint as Dagster resources."""

import dagster as dg
from pydantic import Field, PrivateAttr

from resources.config_snapshot import ConfigFileResource
from revorch.agents.config import AgentsConfig, load_agents_config
from revorch.agents.llm import CircuitBreaker, LlmClient, LlmSettings


class AgentsConfigResource(ConfigFileResource):
    """Prompt versions, models, routing rules, budgets and prices (config/agents.yaml)."""

    path: str = Field(description="Path of the agents YAML file.")

    def config_path(self) -> str:
        return self.path

    def load(self) -> AgentsConfig:
        """The file as the run read it when it started."""
        return load_agents_config(self.path, text=self.snapshot_text())


class LlmResource(dg.ConfigurableResource):
    """The LLM tier: OpenAI or any OpenAI-compatible endpoint (vLLM, Ollama, ...).

    With neither ``api_key`` nor ``base_url`` set, there is no LLM tier and every decision is
    taken offline. Set them from the environment: OPENAI_API_KEY, REVORCH_LLM_BASE_URL.
    """

    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:11434/v1")
    api_key: str | None = Field(default=None, description="Secret; from the environment only.")
    offline_reason: str | None = Field(
        default=None,
        description="Set (e.g. by the CLI's preflight) to switch the LLM tier off for a run.",
    )

    # One per run, shared by every agent's client (setup_for_execution runs once per run).
    _breaker: CircuitBreaker | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._breaker = None

    @property
    def breaker(self) -> CircuitBreaker | None:
        """This run's circuit breaker, once an agent asked for a client."""
        return self._breaker

    @property
    def enabled(self) -> bool:
        return bool(self.api_key or self.base_url) and self.offline_reason is None

    @property
    def tier(self) -> str:
        """What the agents use in this run, for the run's metadata."""
        if self.offline_reason:
            return f"offline ({self.offline_reason})"
        if self._breaker is not None and self._breaker.open:
            return (
                f"off after {self._breaker.threshold} consecutive failures "
                f"({self._breaker.opened_by})"
            )
        return "llm" if self.enabled else "offline (no LLM endpoint set)"

    def client(self, config: AgentsConfig, model: str) -> LlmClient | None:
        if not self.enabled:
            return None
        limits = config.limits
        if self._breaker is None:
            self._breaker = CircuitBreaker(limits.circuit_breaker_failures)
        return LlmClient(
            LlmSettings(
                base_url=self.base_url,
                # Local servers such as Ollama ignore the key, but the client needs one.
                api_key=self.api_key or "no-key",
                model=model,
                timeout_seconds=limits.timeout_seconds,
                max_retries=limits.max_retries,
                requests_per_minute=limits.requests_per_minute,
                tokens_per_minute=limits.tokens_per_minute,
                max_concurrency=limits.max_concurrency,
            ),
            breaker=self._breaker,
        )
