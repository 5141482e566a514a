"""The deal scorer: probability that an open new-business deal is lost, learnt from the
deals already closed. Each deal is described as it stood when it was created (the amount
first quoted, the account, the buyer and the engagement the buyer showed before), so the
model can score a deal from its first day; staleness is judged by the tier on top."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from revorch.agents.offline.inputs import deal_feature_rows
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel, content_version

DEAL_FEATURES = FeatureSpec(
    log_numeric=("amount", "employees", "intent_touches", "touches"),
    categorical=("industry", "tier", "lead_source", "job_title"),
)

CLOSED_DEALS = """
    SELECT d.id AS deal_id, d.company_id, d.contact_id, d.created_at,
           d.stage = 'closedlost' AS lost,
           -- The amount first quoted: a won deal's final amount carries its discount.
           (SELECT TRY_CAST(arg_min(c.properties->>'amount', (c.occurred_at, c.event_id))
                            FILTER (WHERE json_exists(c.properties, '$.amount')) AS DOUBLE)
            FROM change_log AS c WHERE c.object_type = 'deal' AND c.object_id = d.id) AS amount
    FROM deals AS d
    WHERE d.deal_type = 'new_business' AND d.stage IN ('closedwon', 'closedlost')
      AND NOT d._deleted AND d.created_at IS NOT NULL
      AND d.created_at < coalesce($created_before::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ)
"""


class DealModel:
    """Probability an open deal is lost. Train with :meth:`train`, score ``deal_inputs``
    rows with :meth:`predict`; ``version`` is a hash of the model's content."""

    def __init__(self, model: LogisticModel) -> None:
        self.model = model
        self.version = content_version("deal-logreg", model.to_dict())

    @classmethod
    def train(
        cls, conn: duckdb.DuckDBPyConnection, *, created_before: datetime | None = None
    ) -> DealModel:
        """Fit on new-business deals created before ``created_before`` and closed since."""
        rows = deal_feature_rows(conn, CLOSED_DEALS, {"created_before": created_before})
        if len(rows) < 30:
            raise ValueError(f"too few closed deals to learn from ({len(rows)})")
        frame = _frame(rows)
        labels = np.asarray([int(r["lost"]) for r in rows])
        model = LogisticModel.fit(
            frame,
            labels,
            DEAL_FEATURES,
            metadata={"examples": len(rows), "loss_rate": round(float(labels.mean()), 6)},
        )
        return cls(model)

    def predict(self, inputs: list[dict[str, Any]]) -> list[float]:
        """Probability each deal is lost."""
        return self.model.predict_rows(inputs).tolist()

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "kind": "deal", **self.model.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> DealModel:
        return cls(LogisticModel.from_dict(json.loads(text)))


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    keys = (*DEAL_FEATURES.log_numeric, *DEAL_FEATURES.categorical)
    return pl.DataFrame({k: [r.get(k) for r in rows] for k in keys}, strict=False)
