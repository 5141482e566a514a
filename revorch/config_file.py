"""Reading a YAML configuration file into its validated model."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)

# The shipped configuration: the repository's config/ folder (revorch/config links to it), so
# an installed Revorch (`pip install .`) finds it too. REVORCH_*_CONFIG / REVORCH_POLICY point
# elsewhere (revorch/settings.py).
CONFIG_DIR = Path(__file__).parent / "config"


def load_yaml_model(
    path: str | Path,
    model: type[Model],
    error: type[ValueError],
    what: str,
    *,
    text: str | None = None,
) -> Model:
    """The file validated as ``model``; ``error`` names the file and the offending key, in
    one line (the command line prints it as it is). ``text``: the file's content as read
    earlier (a run's snapshot), instead of reading it now."""
    path = Path(path)
    try:
        return model.model_validate(yaml.safe_load(path.read_text() if text is None else text))
    except FileNotFoundError as missing:
        raise error(f"{what} not found: {path}") from missing
    except yaml.YAMLError as invalid:
        mark = getattr(invalid, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(invalid, "problem", None) or str(invalid)
        raise error(f"{path} is not a valid {what}: not YAML{where}: {problem}") from invalid
    except ValidationError as invalid:
        raise error(f"{path} is not a valid {what}: {_problems(invalid)}") from invalid


def _problems(invalid: ValidationError, shown: int = 3) -> str:
    """Every problem as ``key a.b: message``, on one line (a misspelt key gives two)."""
    problems = invalid.errors()
    text = "; ".join(
        f"key {'.'.join(str(part) for part in p['loc']) or '(the whole file)'}: {p['msg']}"
        for p in problems[:shown]
    )
    return text + (f" (and {len(problems) - shown} more)" if len(problems) > shown else "")
