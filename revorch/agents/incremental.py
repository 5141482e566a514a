"""Which items an agent run builds inputs for: the ones whose facts changed since its last run.

Each agent keeps a watermark in ``agents.watermarks`` (migration 0008): the change-log load it
has seen, the rule clock it read its inputs at, and a version key (inputs, offline model,
prompt, model and lifecycle config). A run plans its scope from the watermark:

- everything, on the first run, on a full rebuild, when the version key changed, when the
  clock went back, or when the clock moved into another period the agent's inputs depend on
  (``CLOCK`` below: the week for deals and onboardings);
- otherwise the entities touched since: records changed in the loads after the watermark
  (the entity itself, or a record its input reads: its company, its activities, its deals,
  its subscriptions), the ones whose time-based facts fell due while the clock moved (an
  activity dated in the span, a stage move in the span), and the ones whose last decision
  fell back (for want of budget or a failed call), which the memo asks again;
- nothing at all when no load arrived and the clock did not move.

Items newly open become open through a change (a stage move or a record's status), so they
are among the touched. The new watermark is written with the decisions, in one transaction
(``runtime._record``): a run that dies before recording leaves the old one, and the next run
sees the same changes again. The loads seen stop at the slowest of the tables the inputs are
derived from (current state, contact and account lifecycle), so a load that is not folded
into the stages yet is seen again once it is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

# Bump when an input query changes what it returns: every agent then rebuilds everything once.
INPUTS_VERSION = "2"  # 2: declared features, the stale flag on leads

# The derived tables the inputs read, by their state_watermarks name.
DERIVED = ("crm_current_state", "stages/contact_lifecycle", "stages/account_lifecycle")
# The stage tables kept by key (revorch/lifecycle/keyed_tables.py) an agent's scope reads.
KEYED = {"renewal_risk": "stages.adoption_health", "onboarding_plan": "stages.onboarding"}

# What in the clock an agent's inputs read: "span" (time-dated facts, handled by the touched
# query), "week" (the first day of the clock's week), "instant" (any move), None (no clock).
CLOCK = {
    "lead_qualification": "span",
    "deal_risk": "week",
    "ticket_triage": None,
    # stages.adoption_health and stages.onboarding are kept by key, the clock's look-back
    # included: the keys they recomputed are touched (TOUCHED_SQL), and so are the renewal
    # windows and due dates the clock moved over. Onboarding inputs count days to the week.
    "renewal_risk": "span",
    "onboarding_plan": "week",
}

# Every change-log record touched in the loads after the watermark, or dated in the span the
# clock moved over (a change that arrived ahead of the clock enters the inputs only now).
CHANGED_CTE = """
changed AS (
    SELECT DISTINCT object_type, object_id FROM change_log
    WHERE (load_id > $since AND load_id <= $upto)
       OR (occurred_at > $previous_as_of AND occurred_at <= $as_of)
),
-- Contacts whose own facts, or whose stage, may have moved: the contact changed, a deal or
-- activity that refers (or ever referred) to it changed, or a stage move fell in the span.
contacts_touched AS (
    SELECT object_id AS contact_id FROM changed WHERE object_type = 'contact'
    UNION
    SELECT (c.properties->>'contact_id') FROM change_log AS c
    JOIN (SELECT * FROM changed WHERE object_type IN ('deal', 'activity')) AS t
        ON t.object_type = c.object_type AND t.object_id = c.object_id
    WHERE c.object_type IN ('deal', 'activity') AND (c.properties->>'contact_id') IS NOT NULL
    UNION
    SELECT contact_id FROM activities
    WHERE (activity_at > $previous_as_of AND activity_at <= $as_of)
       OR (_first_seen_at > $previous_as_of AND _first_seen_at <= $as_of)
    UNION
    SELECT entity_id FROM stages.stage_transitions
    WHERE entity_type = 'contact'
      AND transitioned_at > $previous_as_of AND transitioned_at <= $as_of
)"""

# The entities whose inputs may differ since the watermark, per agent.
TOUCHED_SQL = {
    "lead_qualification": f"""
WITH {CHANGED_CTE}
SELECT contact_id FROM contacts_touched
UNION
SELECT id FROM contacts
WHERE company_id IN (SELECT object_id FROM changed WHERE object_type = 'company')
""",
    "deal_risk": f"""
WITH {CHANGED_CTE}
SELECT object_id FROM changed WHERE object_type = 'deal'
UNION
SELECT (c.properties->>'deal_id') FROM change_log AS c
JOIN (SELECT * FROM changed WHERE object_type = 'activity') AS t
    ON t.object_type = c.object_type AND t.object_id = c.object_id
WHERE c.object_type = 'activity' AND (c.properties->>'deal_id') IS NOT NULL
UNION
SELECT id FROM deals
WHERE contact_id IN (SELECT contact_id FROM contacts_touched)
   OR company_id IN (SELECT object_id FROM changed WHERE object_type = 'company')
""",
    "ticket_triage": f"""
WITH {CHANGED_CTE},
companies_touched AS (
    SELECT object_id AS company_id FROM changed WHERE object_type = 'company'
    UNION
    SELECT (c.properties->>'company_id') FROM change_log AS c
    JOIN (SELECT * FROM changed WHERE object_type = 'subscription') AS t
        ON t.object_type = c.object_type AND t.object_id = c.object_id
    WHERE c.object_type = 'subscription' AND (c.properties->>'company_id') IS NOT NULL
)
SELECT object_id FROM changed WHERE object_type = 'ticket'
UNION
SELECT id FROM tickets WHERE company_id IN (SELECT company_id FROM companies_touched)
""",
}

# Renewals: the subscriptions stages.adoption_health recomputed since the watermark
# (revorch/lifecycle/keyed_tables.py), those of a company that changed, and those whose end
# date the renewal window's edge moved over.
TOUCHED_SQL["renewal_risk"] = f"""
WITH {CHANGED_CTE}
SELECT key FROM stages.keyed_refreshes
WHERE table_name = 'stages.adoption_health'
  AND (load_id > $since OR (as_of > $previous_as_of AND as_of <= $as_of))
UNION
SELECT id FROM subscriptions
WHERE company_id IN (SELECT object_id FROM changed WHERE object_type = 'company')
   OR (end_date > CAST($previous_as_of + to_days(CAST($renewal_window_days AS INTEGER)) AS DATE)
       AND end_date <= CAST($as_of + to_days(CAST($renewal_window_days AS INTEGER)) AS DATE))
"""

# Onboardings: the deals stages.onboarding recomputed since the watermark (the deal, its
# subscriptions, any owner), those whose due date the clock moved over (now overdue), and
# those whose company, its tickets (any company a changed ticket named) or the deal's contact
# changed.
TOUCHED_SQL["onboarding_plan"] = f"""
WITH {CHANGED_CTE},
companies_touched AS (
    SELECT object_id AS company_id FROM changed WHERE object_type = 'company'
    UNION
    SELECT (c.properties->>'company_id') FROM change_log AS c
    JOIN (SELECT * FROM changed WHERE object_type = 'ticket') AS t
        ON t.object_type = c.object_type AND t.object_id = c.object_id
    WHERE c.object_type = 'ticket' AND (c.properties->>'company_id') IS NOT NULL
)
SELECT key FROM stages.keyed_refreshes
WHERE table_name = 'stages.onboarding'
  AND (load_id > $since OR (as_of > $previous_as_of AND as_of <= $as_of))
UNION
SELECT onboarding_id FROM stages.onboarding
WHERE (due_at >= $previous_as_of AND due_at <= $as_of)
   OR company_id IN (SELECT company_id FROM companies_touched)
   OR deal_id IN (SELECT id FROM deals WHERE contact_id IN
                  (SELECT object_id FROM changed WHERE object_type = 'contact'))
"""

# Entities whose newest decision fell back (budget, failed call): the memo does not re-use
# those, so they are asked again on the next run even when nothing about them changed.
FELL_BACK_SQL = """
SELECT DISTINCT d.entity_id FROM agents.decisions AS d
WHERE d.agent = $agent AND d.fallback_reason IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM agents.decisions AS k
      WHERE k.agent = d.agent AND k.entity_id = d.entity_id AND k.fallback_reason IS NULL
        AND k.decided_at >= d.decided_at)
"""


@dataclass(frozen=True)
class Watermark:
    load_id: int
    as_of: datetime | None
    version_key: str


@dataclass(frozen=True)
class Scope:
    """What one run builds: ``ids`` None for every open item, else only these (maybe none)."""

    ids: list[str] | None
    why: str  # first_run, full_rebuild, version_changed, clock_..., changed, unchanged
    seen: Watermark  # written with the run's decisions


def version_key(*parts: object) -> str:
    """One key for everything that changes every input or every decision at once."""
    text = json.dumps([INPUTS_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(
    conn: duckdb.DuckDBPyConnection,
    agent: str,
    version: str,
    *,
    full_rebuild: bool = False,
    renewal_window_days: int = 0,
    clock: str | None = None,
    watermark: str | None = None,
) -> Scope:
    """The scope of this run of ``agent`` (see the module docstring); the renewal window is
    the one the renewal agent's inputs flag; ``clock`` overrides how its inputs read the clock
    (``CLOCK``), when declared features make them read it. ``watermark`` names the watermark
    to plan from when another reader of the agent's inputs keeps its own (default: ``agent``)."""
    seen = Watermark(
        _loads_folded(conn, agent), conn.execute("SELECT clock_now()").fetchone()[0], version
    )
    last = _watermark(conn, watermark or agent)
    why = _why_everything(agent, last, seen, full_rebuild, clock or CLOCK[agent])
    if why is not None:
        return Scope(None, why, seen)
    moved = seen.as_of != last.as_of
    if seen.load_id == last.load_id and not moved:
        ids: set[str] = set()
    elif agent in TOUCHED_SQL:
        parameters = {
            "since": last.load_id,
            "upto": seen.load_id,
            # An empty span when the clock did not move (or is not read by this agent).
            "previous_as_of": last.as_of if moved else seen.as_of,
            "as_of": seen.as_of,
        }
        if agent in KEYED and not _has_table(conn, "stages", "keyed_refreshes"):
            return Scope(None, "changed", seen)  # its stage table was never kept by key
        if agent == "renewal_risk":
            parameters["renewal_window_days"] = renewal_window_days
        rows = conn.execute(TOUCHED_SQL[agent], parameters).fetchall()
        ids = {row[0] for row in rows if row[0] is not None}
    else:
        return Scope(None, "changed", seen)
    ids |= {row[0] for row in conn.execute(FELL_BACK_SQL, {"agent": agent}).fetchall()}
    return Scope(sorted(ids), "changed" if ids else "unchanged", seen)


def inputs_key(lifecycle_json: str, models_json: str) -> str:
    """What the agents' inputs are read with besides the state store (the lifecycle config,
    the declared features): equal keys, equal inputs from the same state."""
    return version_key("inputs", lifecycle_json, models_json)


def items_watermark(agent: str) -> str:
    """The watermark of ``agents.item_hashes``: the loads and clock its rows are current for,
    and their :func:`inputs_key`."""
    return f"inputs/{agent}"


@dataclass(frozen=True)
class ItemsRead:
    """What one agent run read: ``ids`` None for every open item, else the ids planned (each
    read, or no longer open); ``key`` the :func:`inputs_key` they were read with."""

    ids: list[str] | None
    key: str


def record_items(
    conn: duckdb.DuckDBPyConnection,
    agent: str,
    read: ItemsRead,
    items: list[dict],
    hashes: list[str],
    seen: Watermark | None,
) -> None:
    """Keep ``agents.item_hashes`` as the open items and input hashes this run read, current
    as of ``seen``; call inside the transaction that writes the run's decisions. The
    proposals take them instead of reading the inputs again (revorch/governance/open_items.py).
    ``seen`` None (a slice before a run's last): their watermark is dropped until the last
    slice records it, so a run that dies part-way leaves the proposals reading every input."""
    if read.ids is None:
        conn.execute("DELETE FROM agents.item_hashes WHERE agent = ?", [agent])
    elif read.ids:
        conn.execute(
            "DELETE FROM agents.item_hashes WHERE agent = ? AND entity_id IN (SELECT unnest(?))",
            [agent, read.ids],
        )
    if items:
        conn.execute(
            "INSERT INTO agents.item_hashes SELECT ?, unnest(?), unnest(?)",
            [agent, [str(item["id"]) for item in items], hashes],
        )
    if seen is None:
        conn.execute("DELETE FROM agents.watermarks WHERE agent = ?", [items_watermark(agent)])
    else:
        save(conn, items_watermark(agent), Watermark(seen.load_id, seen.as_of, read.key))


def save(conn: duckdb.DuckDBPyConnection, agent: str, seen: Watermark) -> None:
    """Record what ``agent`` has seen; call inside the transaction that writes its decisions."""
    # Delete and insert rather than INSERT OR REPLACE: DuckLake has no primary keys.
    conn.execute("DELETE FROM agents.watermarks WHERE agent = ?", [agent])
    conn.execute(
        "INSERT INTO agents.watermarks VALUES (?, ?, ?, ?, now())",
        [agent, seen.load_id, seen.as_of, seen.version_key],
    )


def _why_everything(
    agent: str, last: Watermark | None, seen: Watermark, full: bool, clock: str | None
):
    if full:
        return "full_rebuild"
    if last is None:
        return "first_run"
    if last.version_key != seen.version_key:
        return "version_changed"
    if last.as_of is None or seen.as_of is None or seen.as_of < last.as_of:
        return "clock_went_back" if seen.as_of != last.as_of else None
    if clock == "instant" and seen.as_of != last.as_of:
        return "clock_moved"
    if clock == "week" and _week(seen.as_of) != _week(last.as_of):
        return "clock_new_week"
    return None


def _week(instant: datetime):
    # As inputs._clock_week: the first day of the week, in the instant's own zone.
    day = instant.date()
    return day - timedelta(days=day.weekday())


def _loads_folded(conn: duckdb.DuckDBPyConnection, agent: str) -> int:
    """The newest load every table the inputs derive from has folded in (0 if one never ran)."""
    derived = [*DERIVED, *([KEYED[agent]] if agent in KEYED else [])]
    newest = conn.execute("SELECT coalesce(max(load_id), 0) FROM change_log").fetchone()[0]
    marks = dict(
        conn.execute(
            "SELECT name, load_id FROM state_watermarks WHERE name IN (SELECT unnest($names))",
            {"names": derived},
        ).fetchall()
    )
    return min(newest, *(marks.get(name, 0) for name in derived))


def _watermark(conn: duckdb.DuckDBPyConnection, agent: str) -> Watermark | None:
    row = conn.execute(
        "SELECT load_id, as_of, version_key FROM agents.watermarks WHERE agent = ?", [agent]
    ).fetchone()
    return Watermark(*row) if row else None


def _has_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
            [schema, table],
        ).fetchone()[0]
    )
