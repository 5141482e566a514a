"""The lifecycle configuration file as a Dagster resource."""

import dagster as dg
from pydantic import Field

from revorch.lifecycle.config import LifecycleConfig, load_lifecycle_config


class LifecycleConfigResource(dg.ConfigurableResource):
    """Stages, allowed moves, rules and handoff thresholds (config/lifecycle.yaml)."""

    path: str = Field(description="Path of the lifecycle YAML file.")

    def load(self) -> LifecycleConfig:
        return load_lifecycle_config(self.path)
