"""What each agent is asked about: one row (a dict) per open item, read from DuckDB.

Every row has ``id`` (the entity id) and its features, with keys in sorted order, floats
rounded and times as ISO dates or timestamps, so the canonical JSON of a row only changes
when the facts do (rows are hashed to memoize decisions). "Now" is the rule clock
(``clock_now()``, revorch/clock.py), or ``as_of`` when given; it enters a row only as the
first day of its week, so the clock alone changes a row at most weekly.

The lead features are computed "as of" a scoring time: firmographics as the CRM had them
then, engagement only from activities recorded by then and inside the first
``feature_days`` after the contact was created. Training (``LeadModel.train``) and scoring
(``lead_inputs``) share the same query, so a model never sees a feature built differently
from the one it was trained on.
"""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb

from revorch.agents.features import ModelsConfig
from revorch.agents.memo import Stable
from revorch.agents.offline.declared import declared_values
from revorch.lifecycle.config import LifecycleConfig, load_lifecycle_config
from revorch.state.scratch import path_literal

FEATURE_DAYS = 14
# Counted per contact in its first FEATURE_DAYS, before any deal exists.
ENGAGEMENT_COUNTS = (
    "emails_sent",
    "emails_opened",
    "emails_replied",
    "web_visits",
    "pricing_visits",
    "form_fills",
    "meetings",
    "calls",
)
QUALIFIED_STAGES = ("sql", "opportunity", "customer")

# The relations the lead features read (``LEAD_FEATURES_SQL``, ``RECENT_ACTIVITY``); staging
# passes read their own rows of them instead (``spread_lead_sources``).
LEAD_SOURCES = {
    "contact_log": "(SELECT * FROM change_log WHERE object_type = 'contact')",
    "company_log": "(SELECT * FROM change_log WHERE object_type = 'company')",
    "activities": "activities",
    "transitions": "(SELECT * FROM stages.stage_transitions WHERE entity_type = 'contact')",
}

# `points` is a relation (contact_id, created_at, as_of): whom to describe, and when.
LEAD_FEATURES_SQL = """
WITH points AS ({points}),
contact_facts AS (
    SELECT p.contact_id,
           arg_max(c.properties->>'company_id', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.company_id')) AS company_id,
           arg_max(c.properties->>'lead_source', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.lead_source')) AS lead_source,
           arg_max(c.properties->>'job_title', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.job_title')) AS job_title
    FROM points AS p
    JOIN {contact_log} AS c ON c.object_id = p.contact_id AND c.occurred_at <= p.as_of
    GROUP BY p.contact_id
),
company_facts AS (
    SELECT f.contact_id,
           arg_max(c.properties->>'name', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.name')) AS company_name,
           arg_max(c.properties->>'industry', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.industry')) AS industry,
           arg_max(c.properties->>'tier', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.tier')) AS tier,
           arg_max(TRY_CAST(c.properties->>'employees' AS DOUBLE), (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.employees')) AS employees,
           arg_max(TRY_CAST(c.properties->>'annual_revenue' AS DOUBLE),
                   (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.annual_revenue')) AS annual_revenue
    FROM contact_facts AS f
    JOIN points AS p USING (contact_id)
    JOIN {company_log} AS c ON c.object_id = f.company_id AND c.occurred_at <= p.as_of
    GROUP BY f.contact_id
),
engagement AS (
    SELECT p.contact_id,
           count(*) FILTER (WHERE a.activity_type = 'email_sent') AS emails_sent,
           count(*) FILTER (WHERE a.activity_type = 'email_opened') AS emails_opened,
           count(*) FILTER (WHERE a.activity_type = 'email_replied') AS emails_replied,
           count(*) FILTER (WHERE a.activity_type = 'web_visit') AS web_visits,
           count(*) FILTER (WHERE a.activity_type = 'web_visit' AND a.url LIKE '%/pricing%')
               AS pricing_visits,
           count(*) FILTER (WHERE a.activity_type = 'form_fill') AS form_fills,
           count(*) FILTER (WHERE a.activity_type = 'meeting') AS meetings,
           count(*) FILTER (WHERE a.activity_type = 'call') AS calls
    FROM points AS p
    JOIN {activities} AS a ON a.contact_id = p.contact_id
    -- Recorded by the scoring time, in the first feature_days, and not part of a deal.
    WHERE NOT a._deleted AND a.deal_id IS NULL AND a._first_seen_at <= p.as_of
      AND a.activity_at <= p.as_of AND a.activity_at >= p.created_at
      AND a.activity_at < p.created_at + to_days(CAST($feature_days AS INTEGER))
    GROUP BY p.contact_id
),
stage_then AS (
    SELECT p.contact_id, arg_max(t.to_stage, t.seq) AS stage,
           max(t.transitioned_at) AS stage_entered_at,
           min(t.transitioned_at) FILTER (WHERE list_contains($qualified, t.to_stage))
               AS qualified_at
    FROM points AS p
    JOIN {transitions} AS t ON t.entity_id = p.contact_id AND t.transitioned_at <= p.as_of
    GROUP BY p.contact_id
)
SELECT p.contact_id AS id, p.created_at, p.as_of, f.company_id, f.lead_source, f.job_title,
       co.company_name, co.industry, co.tier, co.employees, co.annual_revenue,
       s.stage, s.stage_entered_at, s.qualified_at,
       {engagement_columns}
FROM points AS p
LEFT JOIN contact_facts AS f USING (contact_id)
LEFT JOIN company_facts AS co USING (contact_id)
LEFT JOIN engagement AS e USING (contact_id)
LEFT JOIN stage_then AS s USING (contact_id)
ORDER BY p.contact_id
"""

OPEN_LEAD_POINTS = """
    SELECT s.entity_id AS contact_id, coalesce(c.created_at, c._first_seen_at) AS created_at,
           coalesce($as_of::TIMESTAMPTZ, clock_now()) AS as_of
    FROM stages.entity_stages AS s
    JOIN contacts AS c ON c.id = s.entity_id
    WHERE s.entity_type = 'contact' AND s.stage IN ('lead', 'mql', 'sql') AND NOT c._deleted
      AND ($ids::VARCHAR[] IS NULL OR s.entity_id IN (SELECT unnest($ids::VARCHAR[])))
"""

# The newest activities a contact had by the scoring time: short context for the LLM tier.
# `contacts` is a query of the contact ids wanted.
RECENT_ACTIVITY = """
SELECT contact_id,
       list(strftime(activity_at, '%Y-%m-%d') || ' ' || activity_type
            || coalesce(' ' || url, '') || coalesce(': ' || subject, '')
            ORDER BY activity_at DESC, id)[1:5] AS recent,
       count(*) AS touches_total
FROM {activities}
WHERE NOT _deleted AND contact_id IN ({contacts})
  AND activity_at <= coalesce($as_of::TIMESTAMPTZ, clock_now())
GROUP BY contact_id
"""
RECENT_ACTIVITY_SQL = RECENT_ACTIVITY.format(contacts="SELECT unnest($ids)", **LEAD_SOURCES)

# Every open lead's features and recent activities in one pass, sorted by id (row groups
# then hold id ranges, so a slice's read below skips the others).
STAGE_LEADS_SQL = """
COPY (
    WITH features AS ({features})
    SELECT f.*, r.recent AS _recent, r.touches_total AS _touches
    FROM features AS f
    LEFT JOIN ({recent}) AS r ON r.contact_id = f.id
    ORDER BY f.id
) TO {path} (FORMAT parquet)
"""
STAGED_SLICE_SQL = """
SELECT * FROM read_parquet($path)
WHERE id BETWEEN $first AND $last AND id IN (SELECT unnest($ids::VARCHAR[]))
ORDER BY id
"""


def lead_feature_rows(
    conn: duckdb.DuckDBPyConnection,
    points_sql: str,
    parameters: dict[str, Any],
    *,
    feature_days: int = FEATURE_DAYS,
    models: ModelsConfig | None = None,
    days_to: datetime | None = None,
) -> list[dict[str, Any]]:
    """Lead features for every (contact_id, created_at, as_of) row ``points_sql`` returns:
    the fixed ones, and those ``models.lead`` declares besides (``declared_values``; day
    counts to ``days_to`` if given). ``qualified_at`` is when the contact first reached one
    of the outcome's stages (by the scoring time)."""
    sql, parameters = _lead_features_query(points_sql, parameters, feature_days, models)
    return _with_declared(conn, _rows(conn.execute(sql, parameters)), models, days_to)


def _lead_features_query(
    points_sql: str,
    parameters: dict[str, Any],
    feature_days: int,
    models: ModelsConfig | None,
    sources: dict[str, str] = LEAD_SOURCES,
) -> tuple[str, dict[str, Any]]:
    sql = LEAD_FEATURES_SQL.format(
        points=points_sql,
        engagement_columns=", ".join(f"coalesce(e.{c}, 0) AS {c}" for c in ENGAGEMENT_COUNTS),
        **sources,
    )
    reached = models.lead.outcome.reached if models else list(QUALIFIED_STAGES)
    return sql, {**parameters, "feature_days": feature_days, "qualified": list(reached)}


def _with_declared(
    conn: duckdb.DuckDBPyConnection,
    rows: list[dict[str, Any]],
    models: ModelsConfig | None,
    days_to: datetime | None,
) -> list[dict[str, Any]]:
    """The rows with the features ``models.lead`` declares besides the fixed ones."""
    if models is not None:
        points = [{**r, "contact_id": r["id"]} for r in rows]
        extra = declared_values(conn, "lead", models, points, days_to=days_to)
        for row in rows:
            row.update(extra.get(row["id"], {}))
    return rows


def stage_lead_inputs(
    conn: duckdb.DuckDBPyConnection,
    folder: Path,
    passes: list[list[str]],
    *,
    as_of: datetime | None = None,
    feature_days: int | None = None,
    models: ModelsConfig | None = None,
) -> list[Path | None]:
    """Write the fixed features and recent activities of the open leads of each pass (a sorted
    list of contact ids) to a Parquet file per pass in ``folder``, sorted by id;
    ``lead_inputs(staged=file)`` then reads a slice of them. Each pass's file, or None where
    the pass has no open lead. Read slice by slice from the tables instead, each slice would
    scan the change log and the activities again: a cost of slices x store. Several passes
    read their own rows of the tables, spread over the passes in one scan
    (``spread_lead_sources``), for the same reason."""
    models = models or ModelsConfig()
    feature_days = feature_days or models.lead.scoring_days
    spread = None
    if len(passes) > 1:
        spread = spread_lead_sources(conn, folder / "sources", passes, as_of)
    files: list[Path | None] = []
    for number, ids in enumerate(passes):
        if spread is None:
            points, parameters, sources = OPEN_LEAD_POINTS, {"ids": ids}, LEAD_SOURCES
        elif spread[number] is None:  # no open lead in the pass
            files.append(None)
            continue
        else:
            sources, parameters = dict(spread[number]), {}
            points = f"SELECT * FROM {sources.pop('points')}"
        features, parameters = _lead_features_query(
            points, {**parameters, "as_of": as_of}, feature_days, models, sources
        )
        recent = RECENT_ACTIVITY.format(contacts="SELECT id FROM features", **sources)
        path = folder / f"inputs-{number}.parquet"
        conn.execute(
            STAGE_LEADS_SQL.format(features=features, recent=recent, path=path_literal(path)),
            parameters,
        )
        files.append(path if path.exists() else None)  # DuckDB writes no file for no rows
    if spread is not None:
        shutil.rmtree(folder / "sources")
    return files


# The rows of each lead source a staging pass reads, and the column of their contact's id.
SPREAD_SOURCES = {
    "points": (OPEN_LEAD_POINTS, "contact_id"),
    "contact_log": (
        "SELECT object_id, occurred_at, event_id, properties FROM change_log "
        "WHERE object_type = 'contact'",
        "object_id",
    ),
    "activities": (
        "SELECT id, activity_type, contact_id, deal_id, subject, url, activity_at, "
        "_first_seen_at, _deleted FROM activities WHERE NOT _deleted",
        "contact_id",
    ),
    "transitions": (
        "SELECT entity_id, to_stage, seq, transitioned_at FROM stages.stage_transitions "
        "WHERE entity_type = 'contact'",
        "entity_id",
    ),
}
SPREAD_SQL = """
COPY (
    SELECT r.pass, s.* FROM ({source}) AS s
    JOIN (SELECT unnest($firsts::VARCHAR[]) AS first, unnest($lasts::VARCHAR[]) AS last,
                 unnest(range(len($firsts::VARCHAR[]))) AS pass) AS r
      ON s.{key} BETWEEN r.first AND r.last
) TO {folder} (FORMAT parquet, PARTITION_BY (pass))
"""


def spread_lead_sources(
    conn: duckdb.DuckDBPyConnection,
    folder: Path,
    passes: list[list[str]],
    as_of: datetime | None,
) -> list[dict[str, str] | None]:
    """Each pass's rows of the lead sources (``LEAD_SOURCES``, and the open leads' points), as
    relations on Parquet files in ``folder``, written in one scan of each table; None for a
    pass without an open lead. A pass's contacts are an id range (its first and last id). The
    company changes (a lead's company is no contact of its pass) go whole into one file."""
    folder.mkdir()
    bounds = {"firsts": [ids[0] for ids in passes], "lasts": [ids[-1] for ids in passes]}
    for name, (source, key) in SPREAD_SOURCES.items():
        parameters = bounds | ({"ids": None, "as_of": as_of} if name == "points" else {})
        target = path_literal(folder / name)
        conn.execute(SPREAD_SQL.format(source=source, key=key, folder=target), parameters)
    companies = path_literal(folder / "company_log.parquet")
    conn.execute(
        "COPY (SELECT object_id, occurred_at, event_id, properties FROM change_log "
        f"WHERE object_type = 'company') TO {companies} (FORMAT parquet)"
    )
    spread: list[dict[str, str] | None] = []
    for number in range(len(passes)):
        if not (folder / "points" / f"pass={number}").is_dir():
            spread.append(None)
            continue
        relations = {"company_log": f"read_parquet({companies})"}
        for name in SPREAD_SOURCES:
            files = folder / name / f"pass={number}"
            relations[name] = (
                f"read_parquet({path_literal(files / '*.parquet')})"
                if files.is_dir()
                else f"(SELECT * FROM {LEAD_SOURCES[name]} WHERE false)"
            )
        spread.append(relations)
    return spread


def lead_inputs(
    conn: duckdb.DuckDBPyConnection,
    contact_ids: list[str] | None = None,
    *,
    as_of: datetime | None = None,
    feature_days: int | None = None,
    models: ModelsConfig | None = None,
    staged: str | None = None,
) -> list[dict[str, Any]]:
    """Open leads, MQLs and SQLs with firmographics, early engagement and short context.

    Features are those known at ``as_of`` (default: the rule clock), with the ones
    ``models.lead`` declares (default: the shipped defaults). ``recent_activity`` lists the
    newest five activities (date, type, page or subject) for the LLM tier. ``stale`` is true
    for a lead created more than ``stale_after_days`` before the first day of the scoring
    week; with ``stale: expire`` those leads are left out. ``staged``: the fixed features
    and recent activities come from the file ``stage_lead_inputs`` wrote (the same
    ``as_of`` and ``models``), for ``contact_ids`` (not None), instead of from the tables.
    """
    models = models or ModelsConfig()
    definition = models.lead
    feature_days = feature_days or definition.scoring_days
    week = conn.execute(
        "SELECT date_trunc('week', coalesce($as_of::TIMESTAMPTZ, clock_now()))", {"as_of": as_of}
    ).fetchone()[0]
    recent: dict[str, tuple[list[str], int]] = {}
    if staged is None:
        rows = lead_feature_rows(
            conn,
            OPEN_LEAD_POINTS,
            {"ids": contact_ids, "as_of": as_of},
            feature_days=feature_days,
            models=models,
            days_to=week,
        )
    elif not contact_ids:
        rows = []
    else:
        parameters = {"path": staged, "ids": contact_ids}
        parameters |= {"first": min(contact_ids), "last": max(contact_ids)}
        rows = _rows(conn.execute(STAGED_SLICE_SQL, parameters))
        recent = {r["id"]: (r.pop("_recent") or [], r.pop("_touches") or 0) for r in rows}
        rows = _with_declared(conn, rows, models, week)
    stale_days = definition.stale_after_days
    for row in rows:
        age = (week - row["created_at"]).days if week and row["created_at"] else 0
        row["stale"] = stale_days is not None and age > stale_days
    if definition.stale == "expire":
        rows = [row for row in rows if not row["stale"]]
    if staged is None:
        recent = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                RECENT_ACTIVITY_SQL, {"ids": [r["id"] for r in rows], "as_of": as_of}
            ).fetchall()
        }
    inputs = []
    for row in rows:
        activity, touches = recent.get(row["id"], ([], 0))
        # The scoring time and the qualification time change with the clock, not the facts.
        row.pop("as_of")
        row.pop("qualified_at")
        inputs.append(_stable({**row, "recent_activity": activity, "touches_total": touches}))
    return inputs


# `deals` is a relation with deal_id, company_id, contact_id and created_at (and any more
# columns to pass through); the buyer's engagement is counted before the deal existed.
DEAL_FEATURES_SQL = """
WITH deals_in AS ({deals}),
before_deal AS (
    SELECT d.deal_id,
           count(*) FILTER (WHERE a.activity_type IN ('email_replied', 'meeting', 'form_fill')
                            OR (a.activity_type = 'web_visit' AND a.url LIKE '%/pricing%'))
               AS intent_touches,
           count(*) AS touches
    FROM deals_in AS d
    JOIN activities AS a ON a.contact_id = d.contact_id
    WHERE NOT a._deleted AND a.deal_id IS NULL AND a.activity_at < d.created_at
    GROUP BY d.deal_id
)
SELECT d.*, co.name AS company_name, co.industry, co.tier, co.employees,
       c.lead_source, c.job_title,
       coalesce(b.intent_touches, 0) AS intent_touches, coalesce(b.touches, 0) AS touches
FROM deals_in AS d
LEFT JOIN companies AS co ON co.id = d.company_id
LEFT JOIN contacts AS c ON c.id = d.contact_id
LEFT JOIN before_deal AS b USING (deal_id)
ORDER BY d.deal_id
"""

OPEN_DEALS = """
    SELECT o.deal_id, o.name, o.company_id, o.contact_id, o.owner_id, o.deal_stage, o.amount,
           o.close_date, o.created_at, o.contact_stage,
           (SELECT count(*) FROM activities AS a WHERE a.deal_id = o.deal_id AND NOT a._deleted)
               AS deal_touches,
           (SELECT max(a.activity_at) FROM activities AS a
            WHERE a.deal_id = o.deal_id AND NOT a._deleted) AS last_touch_at
    FROM stages.opportunities AS o
    WHERE $ids::VARCHAR[] IS NULL OR o.deal_id IN (SELECT unnest($ids::VARCHAR[]))
"""


def deal_feature_rows(
    conn: duckdb.DuckDBPyConnection,
    deals_sql: str,
    parameters: dict[str, Any],
    *,
    models: ModelsConfig | None = None,
) -> list[dict[str, Any]]:
    """Deal features for every deal ``deals_sql`` returns (see ``DEAL_FEATURES_SQL``), with
    those ``models.deal`` declares besides, as they stood when the deal was created."""
    rows = _rows(conn.execute(DEAL_FEATURES_SQL.format(deals=deals_sql), parameters))
    if models is not None:
        points = [
            {**r, "id": r["deal_id"], "self_id": r["deal_id"], "as_of": r["created_at"]}
            for r in rows
        ]
        extra = declared_values(conn, "deal", models, points)
        for row in rows:
            row.update(extra.get(row["deal_id"], {}))
    return rows


def deal_inputs(
    conn: duckdb.DuckDBPyConnection,
    deal_ids: list[str] | None = None,
    *,
    models: ModelsConfig | None = None,
) -> list[dict[str, Any]]:
    """Open new-business deals with the account's firmographics and the buyer's engagement.

    ``close_date`` and ``last_touch_at`` let a scorer judge staleness against ``as_of``, the
    first day of the clock's week: a row changes at most weekly when nothing else
    does, so a memoized decision is revisited weekly, not on every run.
    """
    rows = deal_feature_rows(conn, OPEN_DEALS, {"ids": deal_ids}, models=models or ModelsConfig())
    as_of = _clock_week(conn)
    return [_stable({"id": row.pop("deal_id"), **row, "as_of": as_of}) for row in rows]


TICKET_INPUTS_SQL = """
WITH arr AS (
    SELECT company_id, sum(arr) AS active_arr FROM subscriptions
    WHERE status = 'active' AND NOT _deleted GROUP BY company_id
)
SELECT t.id, t.subject, t.body, t.category AS crm_category, t.priority, t.status,
       t.created_at, t.company_id, t.contact_id, co.name AS company_name, co.tier,
       coalesce(arr.active_arr, 0) AS active_arr
FROM tickets AS t
LEFT JOIN companies AS co ON co.id = t.company_id
LEFT JOIN arr USING (company_id)
WHERE NOT t._deleted AND coalesce(t.status, 'new') <> 'closed'
  AND ($ids::VARCHAR[] IS NULL OR t.id IN (SELECT unnest($ids::VARCHAR[])))
ORDER BY t.id
"""


def ticket_inputs(
    conn: duckdb.DuckDBPyConnection, ticket_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Open tickets with their subject, body and priority, and the account's active ARR."""
    return [_stable(r) for r in _rows(conn.execute(TICKET_INPUTS_SQL, {"ids": ticket_ids}))]


RENEWAL_INPUTS_SQL = """
SELECT h.subscription_id AS id, h.company_id, co.name AS company_name, co.tier, h.plan,
       s.start_date,
       h.arr, h.seats, h.seats_active, h.utilization, h.usage_change, h.open_tickets,
       h.angry_tickets, h.health_score, h.health_band, h.end_date,
       h.end_date <= (clock_now() + to_days(CAST($window AS INTEGER)))::DATE
           AS in_renewal_window
FROM stages.adoption_health AS h
LEFT JOIN companies AS co ON co.id = h.company_id
LEFT JOIN subscriptions AS s ON s.id = h.subscription_id
WHERE $ids::VARCHAR[] IS NULL OR h.subscription_id IN (SELECT unnest($ids::VARCHAR[]))
ORDER BY h.subscription_id
"""


def renewal_inputs(
    conn: duckdb.DuckDBPyConnection,
    subscription_ids: list[str] | None = None,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
) -> list[dict[str, Any]]:
    """Active subscriptions with seat use, its trend over the look-back and angry tickets
    (``stages.adoption_health``), flagged ``in_renewal_window`` when close to their end,
    with the features ``models.renewal`` declares besides (day counts to the first day of
    the clock's week)."""
    config = config or load_lifecycle_config()
    parameters = {"ids": subscription_ids, "window": config.accounts.renewal_window_days}
    rows = _rows(conn.execute(RENEWAL_INPUTS_SQL, parameters))
    now, week = conn.execute(
        "SELECT clock_now(), date_trunc('week', clock_now())::TIMESTAMPTZ"
    ).fetchone()
    points = [{**r, "self_id": r["id"], "created_at": r["start_date"], "as_of": now} for r in rows]
    extra = declared_values(conn, "renewal", models or ModelsConfig(), points, days_to=week)
    for row in rows:
        row.update(extra.get(row["id"], {}))
        row.pop("start_date")
    return [_stable(r) for r in rows]


ONBOARDING_INPUTS_SQL = """
WITH open_tickets AS (
    SELECT company_id, count(*) AS open_tickets FROM tickets
    WHERE NOT _deleted AND coalesce(status, 'new') <> 'closed' GROUP BY company_id
)
SELECT o.onboarding_id AS id, o.company_id, o.deal_id, o.owner_id, o.started_at, o.due_at,
       o.status, o.tasks, co.name AS company_name, co.industry, co.tier, co.employees,
       d.amount AS deal_amount, c.job_title AS champion_title,
       s.plan, s.seats, s.seats_active, s.seats_active / nullif(s.seats, 0) AS utilization,
       coalesce(t.open_tickets, 0) AS open_tickets
FROM stages.onboarding_progress AS o
LEFT JOIN companies AS co ON co.id = o.company_id
LEFT JOIN deals AS d ON d.id = o.deal_id
LEFT JOIN contacts AS c ON c.id = d.contact_id
LEFT JOIN subscriptions AS s ON s.deal_id = o.deal_id AND NOT s._deleted
LEFT JOIN open_tickets AS t ON t.company_id = o.company_id
WHERE o.status <> 'activated'
  AND ($ids::VARCHAR[] IS NULL OR o.onboarding_id IN (SELECT unnest($ids::VARCHAR[])))
QUALIFY row_number() OVER (PARTITION BY o.onboarding_id ORDER BY s.start_date, s.id) = 1
ORDER BY o.onboarding_id
"""


def onboarding_inputs(
    conn: duckdb.DuckDBPyConnection, onboarding_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Onboardings not activated yet, with their tasks, CSM, subscription and account facts.

    ``days_since_start`` is counted to ``as_of``, the first day of the clock's week (so a
    row changes at most weekly when nothing else does).
    """
    rows = _rows(conn.execute(ONBOARDING_INPUTS_SQL, {"ids": onboarding_ids}))
    as_of = _clock_week(conn)
    for row in rows:
        row["tasks"] = json.loads(row["tasks"]) if isinstance(row["tasks"], str) else row["tasks"]
        started = row["started_at"]
        days = (date.fromisoformat(as_of) - started.date()).days if as_of and started else 0
        row["days_since_start"] = max(0, days)
        row["as_of"] = as_of
    return [_stable(r) for r in rows]


def _rows(result: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in result.description]
    return [dict(zip(names, values, strict=True)) for values in result.fetchall()]


def _clock_week(conn: duckdb.DuckDBPyConnection) -> str | None:
    monday = conn.execute("SELECT CAST(date_trunc('week', clock_now()) AS DATE)").fetchone()[0]
    return monday.isoformat() if monday else None


def _stable(row: dict[str, Any]) -> dict[str, Any]:
    """Sorted keys, rounded floats, ISO times: a row whose facts did not change hashes alike."""
    return Stable((key, _stable_value(row[key])) for key in sorted(row))


# Values returned as they are, checked first (most values are text and counts). An int
# counts only where it has no is_integer (Python < 3.12): there the last branch rounds it.
_AS_IS = (str, type(None), *(() if hasattr(0, "is_integer") else (int, bool)))


def _stable_value(value: Any) -> Any:
    if type(value) in _AS_IS:
        return value
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_stable_value(v) for v in value]
    if isinstance(value, dict):
        return _stable({str(key): v for key, v in value.items()})
    if hasattr(value, "is_integer"):  # Decimal and numpy numbers
        return round(float(value), 4)
    return value
