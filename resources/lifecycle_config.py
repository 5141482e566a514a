"""The lifecycle configuration file as a Dagster resource."""

from pydantic import Field

from resources.config_snapshot import ConfigFileResource
from revorch.lifecycle.config import LifecycleConfig, load_lifecycle_config


class LifecycleConfigResource(ConfigFileResource):
    """Stages, allowed moves, rules and handoff thresholds (config/lifecycle.yaml)."""

    path: str = Field(description="Path of the lifecycle YAML file.")

    def config_path(self) -> str:
        return self.path

    def load(self) -> LifecycleConfig:
        """The file as the run read it when it started."""
        return load_lifecycle_config(self.path, text=self.snapshot_text())
