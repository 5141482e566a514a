"""The renewal scorer: probability that a subscription churns at its end date, learnt from
subscriptions that already renewed or churned. Each is described as it stood when it
entered its renewal window (``renewal_window_days`` before the end), with the same measures
``stages.adoption_health`` gives for active subscriptions: seat use, its change over the
look-back, and angry and open tickets then."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np
import polars as pl

from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.offline.declared import declared_values
from revorch.agents.offline.inputs import _rows
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel, content_version
from revorch.lifecycle.config import LifecycleConfig, load_lifecycle_config

RENEWAL_FEATURES = FeatureSpec(
    numeric=("utilization", "usage_change"),
    log_numeric=("angry_tickets", "open_tickets", "seats", "arr"),
    categorical=("plan",),
)

ENDED_SUBSCRIPTIONS_SQL = """
WITH ended AS (
    SELECT id, company_id, start_date, list_contains($churned, status) AS churned,
           CAST(end_date AS TIMESTAMPTZ) - to_days(CAST($window AS INTEGER)) AS as_of
    FROM subscriptions
    WHERE (list_contains($churned, status) OR list_contains($renewed, status))
      AND NOT _deleted AND end_date IS NOT NULL
),
facts AS (
    SELECT e.id,
           arg_max(TRY_CAST(c.properties->>'seats' AS DOUBLE), (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.seats')
                       AND c.occurred_at <= e.as_of) AS seats,
           arg_max(TRY_CAST(c.properties->>'arr' AS DOUBLE), (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.arr')
                       AND c.occurred_at <= e.as_of) AS arr,
           arg_max(c.properties->>'plan', (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.plan')
                       AND c.occurred_at <= e.as_of) AS plan,
           arg_max(TRY_CAST(c.properties->>'seats_active' AS DOUBLE), (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.seats_active')
                       AND c.occurred_at <= e.as_of) AS seats_active,
           arg_max(TRY_CAST(c.properties->>'seats_active' AS DOUBLE), (c.occurred_at, c.event_id))
               FILTER (WHERE json_exists(c.properties, '$.seats_active')
                       AND c.occurred_at <= e.as_of - to_days(CAST($lookback AS INTEGER)))
               AS seats_active_before
    FROM ended AS e
    JOIN change_log AS c ON c.object_type = 'subscription' AND c.object_id = e.id
    GROUP BY e.id
),
ticket_load AS (
    SELECT e.id,
           count(*) FILTER (WHERE t.closed_at IS NULL OR t.closed_at > e.as_of) AS open_tickets,
           count(*) FILTER (WHERE t.created_at >= e.as_of - to_days(CAST($lookback AS INTEGER))
                              AND (list_contains($angry_priorities, t.priority)
                                   OR (t.csat <= $angry_csat AND t.closed_at <= e.as_of)))
               AS angry_tickets
    FROM ended AS e
    JOIN tickets AS t ON t.company_id = e.company_id AND t.created_at <= e.as_of
    WHERE NOT t._deleted
    GROUP BY e.id
)
SELECT e.id, e.company_id, e.start_date, e.churned, e.as_of, f.plan, f.arr, f.seats, f.seats_active,
       f.seats_active / nullif(f.seats, 0) AS utilization,
       (f.seats_active - f.seats_active_before) / nullif(f.seats_active_before, 0)
           AS usage_change,
       coalesce(t.open_tickets, 0) AS open_tickets, coalesce(t.angry_tickets, 0) AS angry_tickets
FROM ended AS e
JOIN facts AS f USING (id)
LEFT JOIN ticket_load AS t USING (id)
ORDER BY e.id
"""


class RenewalModel:
    """Probability an active subscription churns at renewal. Train with :meth:`train`, score
    ``renewal_inputs`` rows with :meth:`predict`; ``version`` hashes the model's content."""

    def __init__(self, model: LogisticModel) -> None:
        self.model = model
        self.version = content_version("renewal-logreg", model.to_dict())
        self.metadata = model.metadata

    @classmethod
    def train(
        cls,
        conn: duckdb.DuckDBPyConnection,
        *,
        config: LifecycleConfig | None = None,
        models: ModelsConfig | None = None,
    ) -> RenewalModel:
        """Fit on every subscription that has ended as ``models.renewal`` declares (renewed
        or churned, by default)."""
        models = models or ModelsConfig()
        rows, counts = labelled_renewals(conn, config=config, models=models)
        labels = np.asarray([int(r["churned"]) for r in rows])
        if len(rows) < 30 or labels.sum() < 5:
            raise ValueError(f"too few renewals and churns to learn from ({len(rows)})")
        spec = renewal_features(models)
        metadata = {
            "examples": len(rows),
            "churn_rate": round(float(labels.mean()), 6),
            "definition": models.renewal.key(),
            "outcome": {
                "definition": counts.definition,
                "positives": counts.positives,
                "negatives": counts.negatives,
                "dropped": counts.dropped,
                "late_positives": counts.late_positives,
            },
        }
        return cls(LogisticModel.fit(_frame(rows, spec), labels, spec, metadata=metadata))

    def predict(self, inputs: list[dict[str, Any]]) -> list[float]:
        """Probability each subscription churns at its end date."""
        return self.model.predict_rows(inputs).tolist()

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "kind": "renewal", **self.model.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> RenewalModel:
        return cls(LogisticModel.from_dict(json.loads(text)))


def renewal_features(models: ModelsConfig) -> FeatureSpec:
    """The renewal model's features as declared in ``models.renewal``."""
    numeric, log, categorical, grouped, limits = models.renewal.spec_parts(
        models.feature_types("renewal")
    )
    return FeatureSpec(numeric, log, categorical, grouped, tuple(sorted(limits.items())))


ENDED_COUNT_SQL = """
SELECT count(*) FROM subscriptions
WHERE (list_contains($churned, status) OR list_contains($renewed, status))
  AND NOT _deleted AND end_date IS NOT NULL
"""


def labelled_renewals(
    conn: duckdb.DuckDBPyConnection,
    *,
    config: LifecycleConfig | None = None,
    models: ModelsConfig | None = None,
) -> tuple[list[dict[str, Any]], OutcomeCounts]:
    """Ended subscriptions described at their scoring point (``churned`` is the label), and
    what the declared outcome kept and dropped (those with no facts by the scoring point)."""
    config = config or load_lifecycle_config()
    models = models or ModelsConfig()
    outcome = models.renewal.outcome
    risk = config.handoffs.renewal_risk
    window = outcome.scored_days_before_end or config.accounts.renewal_window_days
    statuses = {"churned": list(outcome.churned), "renewed": list(outcome.renewed)}
    rows = _rows(
        conn.execute(
            ENDED_SUBSCRIPTIONS_SQL,
            {
                **statuses,
                "window": window,
                "lookback": risk.lookback_days,
                "angry_priorities": risk.angry_ticket_priorities,
                "angry_csat": risk.angry_csat_at_most,
            },
        )
    )
    points = [{**r, "self_id": r["id"], "created_at": r["start_date"]} for r in rows]
    extra = declared_values(conn, "renewal", models, points)
    for row in rows:
        row.update(extra.get(row["id"], {}))
    churned = sum(1 for r in rows if r["churned"])
    counts = OutcomeCounts(
        examples=len(rows),
        positives=churned,
        negatives=len(rows) - churned,
        dropped=conn.execute(ENDED_COUNT_SQL, statuses).fetchone()[0] - len(rows),
        late_positives=0,
        definition=(
            f"ended {'/'.join(outcome.churned)} (vs {'/'.join(outcome.renewed)}), "
            f"scored {window:g} days before the end"
        ),
    )
    return rows, counts


def _frame(rows: list[dict[str, Any]], spec: FeatureSpec) -> pl.DataFrame:
    keys = (*spec.numeric, *spec.log_numeric, *spec.categorical)
    return pl.DataFrame({k: [r.get(k) for r in rows] for k in keys}, strict=False)
