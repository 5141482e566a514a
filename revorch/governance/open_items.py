"""Every agent's open items as they stand now, kept by key for the outbox.

An agent's decision proposes an action only while its item is open and its inputs are the
ones decided on (candidate_actions.sql). Reading every agent's inputs on every run costs as
much as the store; instead ``governance.open_items`` keeps each open item's input hash, and a
proposal reads again only the items touched since the last one, planned as the agents plan
their own runs (revorch/agents/incremental.py) under the watermarks ``proposals/<agent>``:
everything on the first run, on a full rebuild, when the inputs' version or the lifecycle
config changed, or when the clock moved into a period the inputs read.

The decisions to look at are those of the items read again and every decision taken since
the last proposal (``proposals/decisions``, the newest ``decided_at`` seen): for any other
item nothing that decides its proposal changed, so a proposal from scratch finds only actions
already proposed there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial

import duckdb
import polars as pl

from revorch.agents import incremental
from revorch.agents.features import ModelsConfig
from revorch.agents.memo import input_hash
from revorch.agents.registry import INPUTS, id_slices, input_clock, slice_reader
from revorch.lifecycle.config import load_lifecycle_config

DECISIONS = "proposals/decisions"
# Reading every item of an agent (a first run, a full rebuild), ids are read this many at a
# time from a superset of the agent's items (``registry.id_slices``: the reader keeps the open
# ones), so no more than a slice's inputs are held in Python: about 700,000 open leads at a
# million contacts.
SLICE_IDS = 50_000


def watermark(agent: str) -> str:
    return f"proposals/{agent}"


@dataclass(frozen=True)
class Refreshed:
    """What a proposal must look at again: every item of the agents in ``everything``, the
    (agent, entity_id) pairs of ``items``, and the decisions taken after ``decided_after``."""

    everything: frozenset[str]
    items: pl.DataFrame  # agent, entity_id
    decided_after: datetime | None  # None: every decision
    decided_upto: datetime | None  # the newest decision seen now (the next mark)


def refresh(
    conn: duckdb.DuckDBPyConnection,
    *,
    full: bool = False,
    slice_ids: int | None = None,
    models: ModelsConfig | None = None,
) -> Refreshed:
    """Bring ``governance.open_items`` up to date and move the watermarks on; call inside the
    transaction that records the proposals, so a proposal that dies moves nothing. ``models``:
    the features the agents declare (config/agents.yaml ``models:``; default: the shipped
    ones), so the inputs are read here as the agents read them."""
    slice_ids = slice_ids or SLICE_IDS
    lifecycle = load_lifecycle_config()
    models = models or ModelsConfig()
    key = incremental.inputs_key(lifecycle.model_dump_json(), models.model_dump_json())
    version = incremental.version_key("proposals", key)
    everything, pairs = set(), []
    for agent in INPUTS:
        plan = partial(
            incremental.plan,
            conn,
            agent,
            renewal_window_days=lifecycle.accounts.renewal_window_days,
            clock=input_clock(agent, models),
        )
        scope = plan(version, full_rebuild=full, watermark=watermark(agent))
        if scope.ids == []:
            incremental.save(conn, watermark(agent), scope.seen)
            continue
        # The hashes the agent recorded are current but for the items touched since it read
        # them: those only are read here. None: read every one (the agent never recorded
        # hashes with these options, or a full rebuild trusts nothing kept).
        changed = None if full else plan(key, watermark=incremental.items_watermark(agent)).ids

        def read_again(ids: list[str] | None, agent=agent) -> None:
            slices = id_slices(conn, agent, ids, slice_ids)
            with slice_reader(conn, agent, lifecycle, models, ids, slices) as read:
                for some in slices:
                    _insert(conn, agent, read(conn, some))

        if scope.ids is None:
            everything.add(agent)
            conn.execute("DELETE FROM governance.open_items WHERE agent = ?", [agent])
        else:
            pairs += [(agent, entity_id) for entity_id in scope.ids]
            conn.execute(
                "DELETE FROM governance.open_items "
                "WHERE agent = ? AND entity_id IN (SELECT unnest(?))",
                [agent, scope.ids],
            )
        if changed is None:
            read_again(scope.ids)
        else:
            _take(conn, agent, scope.ids, changed)
            wanted = changed if scope.ids is None else sorted(set(scope.ids) & set(changed))
            read_again(wanted)
        incremental.save(conn, watermark(agent), scope.seen)
    last = conn.execute(
        "SELECT as_of FROM agents.watermarks WHERE agent = ?", [DECISIONS]
    ).fetchone()
    upto = conn.execute("SELECT max(decided_at) FROM agents.decisions").fetchone()[0]
    if upto is not None:
        incremental.save(conn, DECISIONS, incremental.Watermark(0, upto, ""))
    return Refreshed(
        frozenset(everything),
        pl.DataFrame(pairs, schema={"agent": pl.String, "entity_id": pl.String}, orient="row"),
        None if full or last is None else last[0],
        upto,
    )


def _take(
    conn: duckdb.DuckDBPyConnection, agent: str, ids: list[str] | None, changed: list[str]
) -> None:
    """Record the agent's own hashes (``agents.item_hashes``) of ``ids`` (None: every item)
    but the ``changed`` ones."""
    conn.execute(
        """
        INSERT INTO governance.open_items (agent, entity_id, input_hash)
        SELECT agent, entity_id, input_hash FROM agents.item_hashes
        WHERE agent = $agent
          AND ($ids::VARCHAR[] IS NULL OR entity_id IN (SELECT unnest($ids::VARCHAR[])))
          AND entity_id NOT IN (SELECT unnest($changed::VARCHAR[]))
        """,
        {"agent": agent, "ids": ids, "changed": changed},
    )


def _insert(conn: duckdb.DuckDBPyConnection, agent: str, items: list[dict]) -> None:
    """Record the open items read, with their input hashes."""
    if not items:
        return
    rows = pl.DataFrame(
        {
            "agent": agent,
            "entity_id": [str(item["id"]) for item in items],
            "input_hash": [input_hash(item) for item in items],
        }
    )
    conn.register("refreshed_items", rows)
    conn.execute("INSERT INTO governance.open_items BY NAME SELECT * FROM refreshed_items")
    conn.unregister("refreshed_items")
