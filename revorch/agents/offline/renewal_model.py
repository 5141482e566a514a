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
    SELECT id, company_id, status = 'churned' AS churned,
           CAST(end_date AS TIMESTAMPTZ) - to_days(CAST($window AS INTEGER)) AS as_of
    FROM subscriptions
    WHERE status IN ('renewed', 'churned') AND NOT _deleted AND end_date IS NOT NULL
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
SELECT e.id, e.churned, e.as_of, f.plan, f.arr, f.seats, f.seats_active,
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

    @classmethod
    def train(
        cls, conn: duckdb.DuckDBPyConnection, *, config: LifecycleConfig | None = None
    ) -> RenewalModel:
        """Fit on every subscription that has renewed or churned."""
        config = config or load_lifecycle_config()
        risk = config.handoffs.renewal_risk
        rows = _rows(
            conn.execute(
                ENDED_SUBSCRIPTIONS_SQL,
                {
                    "window": config.accounts.renewal_window_days,
                    "lookback": risk.lookback_days,
                    "angry_priorities": risk.angry_ticket_priorities,
                    "angry_csat": risk.angry_csat_at_most,
                },
            )
        )
        labels = np.asarray([int(r["churned"]) for r in rows])
        if len(rows) < 30 or labels.sum() < 5:
            raise ValueError(f"too few renewals and churns to learn from ({len(rows)})")
        model = LogisticModel.fit(
            _frame(rows),
            labels,
            RENEWAL_FEATURES,
            metadata={"examples": len(rows), "churn_rate": round(float(labels.mean()), 6)},
        )
        return cls(model)

    def predict(self, inputs: list[dict[str, Any]]) -> list[float]:
        """Probability each subscription churns at its end date."""
        return self.model.predict_rows(inputs).tolist()

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "kind": "renewal", **self.model.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> RenewalModel:
        return cls(LogisticModel.from_dict(json.loads(text)))


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    keys = (*RENEWAL_FEATURES.numeric, *RENEWAL_FEATURES.log_numeric, *RENEWAL_FEATURES.categorical)
    return pl.DataFrame({k: [r.get(k) for r in rows] for k in keys}, strict=False)
