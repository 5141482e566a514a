"""Dagster resources, and the one place that picks their configuration."""

from __future__ import annotations

import os
from typing import get_args

import dagster as dg

from resources.agents import AgentsConfigResource, LlmResource
from resources.governance import (
    DispatcherResource,
    DispatchTarget,
    GovernanceResource,
    WriteBackMode,
)
from resources.hubspot import HubSpotResource
from resources.landing_zone import LandingZoneResource
from resources.lifecycle_config import LifecycleConfigResource
from resources.salesforce import SalesforceResource
from resources.state_store import StateStore
from revorch import settings
from revorch.sources.hubspot import config as hubspot_config
from revorch.sources.salesforce.sync import cursor_folder


def default_resources() -> dict[str, object]:
    """Resources for this environment (paths from REVORCH_HOME / REVORCH_DB / REVORCH_LANDING)."""
    settings.database_path().parent.mkdir(parents=True, exist_ok=True)
    return {
        # REVORCH_CLOCK: wall (default), data (replay history) or an instant (revorch/clock.py).
        # REVORCH_STATE_BACKEND: duckdb (the file, default) or ducklake (docs/deployment.md).
        "state_store": StateStore.configured(
            settings.database_path(), clock=_from_env("REVORCH_CLOCK") or "wall"
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
        # REVORCH_DISPATCH_TARGET: outbox (default; webhook when REVORCH_WEBHOOK_URL is set),
        # webhook, hubspot or salesforce; REVORCH_WRITEBACK: dry_run (default) or live.
        "dispatcher": DispatcherResource(
            outbox_path=str(settings.outbox_path()),
            journal_path=str(settings.dispatch_journal_path()),
            dispatch_target=_choice("REVORCH_DISPATCH_TARGET", DispatchTarget)
            or ("webhook" if os.environ.get("REVORCH_WEBHOOK_URL") else "outbox"),
            writeback=_choice("REVORCH_WRITEBACK", WriteBackMode) or "dry_run",
            webhook_url=_from_env("REVORCH_WEBHOOK_URL"),
            webhook_secret=_from_env("REVORCH_WEBHOOK_SECRET"),
            hubspot_access_token=_from_env(hubspot_config.TOKEN_VARIABLE),
        ),
        # Used only by the salesforce_sync job (docs/sources/salesforce.md).
        "salesforce": SalesforceResource(
            instance_url=_from_env("SALESFORCE_INSTANCE_URL"),
            access_token=_from_env("SALESFORCE_ACCESS_TOKEN"),
            client_id=_from_env("SALESFORCE_CLIENT_ID"),
            client_secret=_from_env("SALESFORCE_CLIENT_SECRET"),
            domain=os.environ.get("SALESFORCE_DOMAIN") or "login",
            org_id=_from_env("SALESFORCE_ORG_ID"),
            cursor_folder=str(cursor_folder()),
        ),
        "hubspot": HubSpotResource(access_token=dg.EnvVar(hubspot_config.TOKEN_VARIABLE)),
    }


def _choice(name: str, allowed: object) -> str | None:
    """The variable's value if it is one of the ``Literal`` type's; a clear error if not."""
    value = os.environ.get(name, "").strip()
    choices = get_args(allowed)
    if value and value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value or None


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
    "HubSpotResource",
    "LandingZoneResource",
    "LifecycleConfigResource",
    "LlmResource",
    "SalesforceResource",
    "StateStore",
    "default_resources",
]
