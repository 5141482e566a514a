"""A configuration file read once when a run starts: every step of the run sees that snapshot,
so an edit during a run waits for the next run instead of changing this one halfway."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

# Run tag prefix: ``revorch/config/<file name>`` = the first 12 hex digits of its SHA-256.
TAG_PREFIX = "revorch/config/"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ConfigFileResource(dg.ConfigurableResource):
    """A resource whose YAML file (:meth:`config_path`) is read in ``setup_for_execution``,
    once per run (``revorch_main`` runs every step in one process), and tagged on the run by
    its content hash. Outside a run, :meth:`snapshot_text` reads the file when asked."""

    _text: str | None = PrivateAttr(default=None)

    def config_path(self) -> str:
        raise NotImplementedError

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        path = Path(self.config_path())
        self._text = path.read_text()
        if context.instance is not None and context.dagster_run is not None:
            context.instance.add_run_tags(
                context.dagster_run.run_id, {TAG_PREFIX + path.name: content_hash(self._text)}
            )

    def snapshot_text(self) -> str:
        """The file as this run read it when it started (now, outside a run)."""
        if self._text is not None:
            return self._text
        return Path(self.config_path()).read_text()
