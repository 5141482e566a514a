"""Dagster resources, and the one place that picks their configuration."""

from __future__ import annotations

from resources.landing_zone import LandingZoneResource
from resources.lifecycle_config import LifecycleConfigResource
from resources.state_store import StateStore
from revorch import settings


def default_resources() -> dict[str, object]:
    """Resources for this environment (paths from REVORCH_HOME / REVORCH_DB / REVORCH_LANDING)."""
    settings.database_path().parent.mkdir(parents=True, exist_ok=True)
    return {
        "state_store": StateStore(database=str(settings.database_path())),
        "landing_zone": LandingZoneResource(path=str(settings.landing_path())),
        "lifecycle": LifecycleConfigResource(path=str(settings.lifecycle_config_path())),
    }


__all__ = ["LandingZoneResource", "LifecycleConfigResource", "StateStore", "default_resources"]
