"""The declared features (revorch/agents/features.py) that the fixed input queries do not
carry: CRM and custom properties, activity counts in windows, derived day counts.

They are computed for a list of points (one per example: its id, the records it reaches and
its scoring time), by one query built from the declaration, so training and scoring read
them the same way. Values come as the CRM had them at the scoring time (``as_of``), except
a property declared ``as_of: latest``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from revorch.agents.features import Feature, ModelsConfig

# Which point column holds the id of each record a model reaches.
_ID_COLUMN = {
    "contact": "contact_id",
    "company": "company_id",
    "deal": "self_id",
    "subscription": "self_id",
}
# Whose activities a model counts: the person for leads and deals, the account for renewals.
_ACTIVITY_OWNER = {"lead": "contact_id", "deal": "contact_id", "renewal": "company_id"}

POINTS_SQL = """
SELECT unnest($p_id::VARCHAR[]) AS id, unnest($p_self::VARCHAR[]) AS self_id,
       unnest($p_contact::VARCHAR[]) AS contact_id, unnest($p_company::VARCHAR[]) AS company_id,
       unnest($p_created::TIMESTAMPTZ[]) AS created_at, unnest($p_as_of::TIMESTAMPTZ[]) AS as_of,
       unnest($p_days_to::TIMESTAMPTZ[]) AS days_to
"""


def extra_features(definition_features: list[Feature]) -> list[Feature]:
    """The declared features the fixed queries do not compute."""
    return [f for f in definition_features if f.kind != "built_in"]


def declared_values(
    conn: duckdb.DuckDBPyConnection,
    kind: str,
    models: ModelsConfig,
    points: list[dict[str, Any]],
    *,
    days_to: datetime | None = None,
) -> dict[str, dict[str, Any]]:
    """The extra declared features of ``kind`` for each point, by its ``id``.

    A point has ``id``, ``as_of`` (the scoring time), ``created_at`` and, as the model
    reaches them, ``contact_id``, ``company_id`` and ``self_id`` (the deal or subscription).
    Day counts run to ``days_to`` when given (scoring: the first day of the clock's week, so
    a row changes at most weekly), else to each point's ``as_of``.
    """
    features = extra_features(models.definition(kind).features)
    if not features or not points:
        return {}
    types = models.feature_types(kind)
    sql, parameters = _query(kind, features, models)
    parameters |= {
        "p_id": [p["id"] for p in points],
        "p_self": [p.get("self_id") for p in points],
        "p_contact": [p.get("contact_id") for p in points],
        "p_company": [p.get("company_id") for p in points],
        "p_created": [p.get("created_at") for p in points],
        "p_as_of": [p["as_of"] for p in points],
        "p_days_to": [days_to or p["as_of"] for p in points],
    }
    result = conn.execute(sql, parameters)
    names = [d[0] for d in result.description]
    values = {}
    for row in result.fetchall():
        record = dict(zip(names, row, strict=True))
        point_id = record.pop("id")
        for f in features:
            if types[f.name] == "boolean" and record[f.name] is not None:
                record[f.name] = int(record[f.name])
        values[point_id] = record
    return values


def _query(kind: str, features: list[Feature], models: ModelsConfig) -> tuple[str, dict]:
    types = models.property_types()
    ctes, columns, joins, parameters = [f"points AS ({POINTS_SQL})"], [], [], {}
    by_object: dict[str, list[Feature]] = {}
    for f in features:
        if f.kind == "property":
            by_object.setdefault(f.object, []).append(f)
    for object_type, declared in by_object.items():
        alias = f"props_{object_type}"
        picks = []
        for f in declared:
            path = f"$.{f.field}"
            known = "" if f.as_of == "latest" else " AND c.occurred_at <= p.as_of"
            picks.append(
                f"arg_max(c.properties->>'{f.field}', (c.occurred_at, c.event_id)) "
                f"FILTER (WHERE json_exists(c.properties, '{path}'){known}) AS \"{f.name}\""
            )
            columns.append(_typed(f'{alias}."{f.name}"', types[f.object][f.field], f.name))
        ctes.append(
            f"{alias} AS (SELECT p.id, {', '.join(picks)} FROM points AS p "
            f"JOIN change_log AS c ON c.object_type = '{object_type}' "
            f"AND c.object_id = p.{_ID_COLUMN[object_type]} GROUP BY p.id)"
        )
        joins.append(f"LEFT JOIN {alias} USING (id)")

    counts = [f for f in features if f.kind == "activities"]
    needs_touch = any(f.derived == "days_since_last_touch" for f in features)
    if counts or needs_touch:
        picks = ["max(a.activity_at) AS last_touch_at"]
        for i, f in enumerate(counts):
            window = f.activities
            conditions = [f"list_contains($types_{i}, a.activity_type)"]
            parameters[f"types_{i}"] = list(window.types)
            if window.url_contains:
                conditions.append(f"contains(coalesce(a.url, ''), $url_{i})")
                parameters[f"url_{i}"] = window.url_contains
            if window.days is not None and window.start == "scoring_point":
                conditions.append(f"a.activity_at > p.as_of - to_days({window.days})")
            elif window.days is not None:
                conditions.append(
                    f"a.activity_at >= p.created_at "
                    f"AND a.activity_at < p.created_at + to_days({window.days})"
                )
            picks.append(f'count(*) FILTER (WHERE {" AND ".join(conditions)}) AS "{f.name}"')
            columns.append(f'coalesce(acts."{f.name}", 0) AS "{f.name}"')
        ctes.append(
            f"acts AS (SELECT p.id, {', '.join(picks)} FROM points AS p "
            f"JOIN activities AS a ON a.{_ACTIVITY_OWNER[kind]} = p.{_ACTIVITY_OWNER[kind]} "
            "WHERE NOT a._deleted AND a._first_seen_at <= p.as_of AND a.activity_at <= p.as_of "
            "GROUP BY p.id)"
        )
        joins.append("LEFT JOIN acts USING (id)")

    for f in features:
        if f.derived == "days_since_last_touch":
            # Never touched: the days since the record was created.
            columns.append(
                f"date_diff('day', coalesce(acts.last_touch_at, p.created_at), p.days_to) "
                f'AS "{f.name}"'
            )
        elif f.derived == "record_age_days":
            columns.append(f"date_diff('day', p.created_at, p.days_to) AS \"{f.name}\"")
        elif f.derived == "tenure_days":
            ctes.append(
                "tenure AS (SELECT p.id, min(s.start_date) AS first_start FROM points AS p "
                "JOIN subscriptions AS s ON s.company_id = p.company_id AND NOT s._deleted "
                "AND s.start_date <= p.as_of GROUP BY p.id)"
            )
            joins.append("LEFT JOIN tenure USING (id)")
            columns.append(
                "date_diff('day', CAST(coalesce(tenure.first_start, p.created_at) AS DATE), "
                f'CAST(p.days_to AS DATE)) AS "{f.name}"'
            )
    sql = (
        f"WITH {', '.join(ctes)} SELECT p.id, {', '.join(columns)} FROM points AS p "
        f"{' '.join(joins)}"
    )
    return sql, parameters


def _typed(expression: str, value_type: str, name: str) -> str:
    """A property's text as its declared type; dates and times as days before ``days_to``."""
    if value_type in ("integer", "number"):
        return f'TRY_CAST({expression} AS DOUBLE) AS "{name}"'
    if value_type == "boolean":
        return f'TRY_CAST({expression} AS BOOLEAN) AS "{name}"'
    if value_type in ("date", "timestamp"):
        return f"date_diff('day', TRY_CAST({expression} AS TIMESTAMPTZ), p.days_to) AS \"{name}\""
    return f'{expression} AS "{name}"'
