"""Reading a YAML configuration file into its validated model."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def load_yaml_model(
    path: str | Path, model: type[Model], error: type[ValueError], what: str
) -> Model:
    """The file validated as ``model``; ``error`` names the file and the offending key."""
    path = Path(path)
    try:
        return model.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as missing:
        raise error(f"{what} not found: {path}") from missing
    except (yaml.YAMLError, ValidationError) as invalid:
        raise error(f"{path} is not a valid {what}:\n{invalid}") from invalid
