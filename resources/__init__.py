"""Dagster resources, and the one place that picks their configuration."""

from __future__ import annotations

import os

import dagster as dg

from resources.agents import AgentsConfigResource, LlmResource
from resources.governance import DispatcherResource, GovernanceResource
from resources.landing_zone import LandingZoneResource
from resources.lifecycle_config import LifecycleConfigResource
from resources.state_store import StateStore
from revorch import settings


def default_resources() -> dict[str, object]:
    """Resources for this environment (paths from REVORCH_HOME / REVORCH_DB / REVORCH_LANDING)."""
    settings.database_path().parent.mkdir(parents=True, exist_ok=True)
    return {
        # REVORCH_CLOCK: wall (default), data (replay history) or an instant (revorch/clock.py).
        "state_store": StateStore(
            database=str(settings.database_path()), clock=_from_env("REVORCH_CLOCK") or "wall"
        ),
        "landing_zone": LandingZoneResource(path=str(settings.landing_path())),
        "lifecycle": LifecycleConfigResource(path=str(settings.lifecycle_config_path())),
        "agents": AgentsConfigResource(path=str(settings.agents_config_path())),
        # No key and no URL: the agents run on the offline tier only.
        "llm": LlmResource(
            base_url=llm_base_url(),
            api_key=dg.EnvVar("OPENAI_API_KEY") if os.environ.get("OPENAI_API_KEY") else None,
        ),
        "governance": GovernanceResource(
            policy_path=str(settings.policy_path()),
            audit_anchor_path=str(settings.audit_anchor_path()),
        ),
        # No webhook URL: actions go to the outbox file.
        "dispatcher": DispatcherResource(
            outbox_path=str(settings.outbox_path()),
            journal_path=str(settings.dispatch_journal_path()),
            webhook_url=_from_env("REVORCH_WEBHOOK_URL"),
            webhook_secret=_from_env("REVORCH_WEBHOOK_SECRET"),
        ),
    }


def llm_base_url() -> str | None:
    """The LLM endpoint from the environment (None: OpenAI's own, if OPENAI_API_KEY is set)."""
    return os.environ.get("REVORCH_LLM_BASE_URL") or None


def _from_env(name: str) -> dg.EnvVar | None:
    """A secret or endpoint read from the environment when the run starts, if it is set."""
    return dg.EnvVar(name) if os.environ.get(name) else None


__all__ = [
    "AgentsConfigResource",
    "DispatcherResource",
    "GovernanceResource",
    "LandingZoneResource",
    "LifecycleConfigResource",
    "LlmResource",
    "StateStore",
    "default_resources",
]
