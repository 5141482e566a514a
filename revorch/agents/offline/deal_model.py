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

from revorch.agents.features import ModelsConfig, OutcomeCounts
from revorch.agents.offline.inputs import deal_feature_rows
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel, content_version

DEAL_FEATURES = FeatureSpec(
    log_numeric=("amount", "employees", "intent_touches", "touches"),
    categorical=("industry", "tier", "lead_source", "job_title"),
)

# With no horizon ($won_within NULL): closed deals, lost = closed lost. With one: every deal
# that old, lost = not closed won within it (won later: `late`, a win called a loss).
CLOSED_DEALS = """
    SELECT d.id AS deal_id, d.company_id, d.contact_id, d.created_at,
           CASE WHEN $won_within IS NULL THEN d.stage = 'closedlost'
                ELSE NOT (d.stage = 'closedwon' AND coalesce(d.closed_at, d._last_changed_at)
                          <= d.created_at + to_days(CAST($won_within AS INTEGER))) END AS lost,
           $won_within IS NOT NULL AND d.stage = 'closedwon'
           AND coalesce(d.closed_at, d._last_changed_at)
               > d.created_at + to_days(CAST($won_within AS INTEGER)) AS late,
           -- The amount first quoted: a won deal's final amount carries its discount.
           (SELECT TRY_CAST(arg_min(c.properties->>'amount', (c.occurred_at, c.event_id))
                            FILTER (WHERE json_exists(c.properties, '$.amount')) AS DOUBLE)
            FROM change_log AS c WHERE c.object_type = 'deal' AND c.object_id = d.id) AS amount
    FROM deals AS d
    WHERE d.deal_type = 'new_business' AND NOT d._deleted AND d.created_at IS NOT NULL
      AND d.created_at < coalesce($created_before::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ)
      AND CASE WHEN $won_within IS NULL THEN d.stage IN ('closedwon', 'closedlost')
               ELSE d.created_at + to_days(CAST($won_within AS INTEGER)) <= data_clock() END
"""

# New-business deals of the period whose outcome is not final yet: left out.
UNSETTLED_DEALS = """
    SELECT count(*) FROM deals AS d
    WHERE d.deal_type = 'new_business' AND NOT d._deleted AND d.created_at IS NOT NULL
      AND d.created_at < coalesce($created_before::TIMESTAMPTZ, 'infinity'::TIMESTAMPTZ)
      AND NOT CASE WHEN $won_within IS NULL THEN d.stage IN ('closedwon', 'closedlost')
                   ELSE d.created_at + to_days(CAST($won_within AS INTEGER)) <= data_clock() END
"""


def deal_features(models: ModelsConfig) -> FeatureSpec:
    """The deal model's features as declared in ``models.deal``."""
    numeric, log, categorical, grouped, limits = models.deal.spec_parts(
        models.feature_types("deal")
    )
    return FeatureSpec(numeric, log, categorical, grouped, tuple(sorted(limits.items())))


def labelled_deals(
    conn: duckdb.DuckDBPyConnection,
    *,
    created_before: datetime | None = None,
    models: ModelsConfig | None = None,
) -> tuple[list[dict[str, Any]], OutcomeCounts]:
    """Deals with a final outcome, described at creation (``lost`` is the label), and what
    the declared outcome kept, dropped and called a loss."""
    models = models or ModelsConfig()
    won_within = models.deal.outcome.won_within_days
    parameters = {"created_before": created_before, "won_within": won_within}
    rows = deal_feature_rows(conn, CLOSED_DEALS, parameters, models=models)
    wins = sum(1 for r in rows if not r["lost"])
    counts = OutcomeCounts(
        examples=len(rows),
        positives=wins,
        negatives=len(rows) - wins,
        dropped=conn.execute(UNSETTLED_DEALS, parameters).fetchone()[0],
        late_positives=sum(1 for r in rows if r["late"]),
        definition=(
            f"won within {won_within} days of creation" if won_within else "closed won (vs lost)"
        ),
    )
    return rows, counts


class DealModel:
    """Probability an open deal is lost. Train with :meth:`train`, score ``deal_inputs``
    rows with :meth:`predict`; ``version`` is a hash of the model's content."""

    def __init__(self, model: LogisticModel) -> None:
        self.model = model
        self.version = content_version("deal-logreg", model.to_dict())
        self.metadata = model.metadata

    @classmethod
    def train(
        cls,
        conn: duckdb.DuckDBPyConnection,
        *,
        created_before: datetime | None = None,
        models: ModelsConfig | None = None,
    ) -> DealModel:
        """Fit on new-business deals created before ``created_before`` whose outcome (as
        ``models.deal`` declares it) is final."""
        models = models or ModelsConfig()
        rows, counts = labelled_deals(conn, created_before=created_before, models=models)
        if len(rows) < 30:
            raise ValueError(f"too few closed deals to learn from ({len(rows)})")
        spec = deal_features(models)
        labels = np.asarray([int(r["lost"]) for r in rows])
        metadata = {
            "examples": len(rows),
            "loss_rate": round(float(labels.mean()), 6),
            "definition": models.deal.key(),
            "outcome": _counts_metadata(counts),
        }
        model = LogisticModel.fit(_frame(rows, spec), labels, spec, metadata=metadata)
        return cls(model)

    def predict(self, inputs: list[dict[str, Any]]) -> list[float]:
        """Probability each deal is lost."""
        return self.model.predict_rows(inputs).tolist()

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "kind": "deal", **self.model.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> DealModel:
        return cls(LogisticModel.from_dict(json.loads(text)))


def _frame(rows: list[dict[str, Any]], spec: FeatureSpec) -> pl.DataFrame:
    keys = (*spec.numeric, *spec.log_numeric, *spec.categorical)
    return pl.DataFrame({k: [r.get(k) for r in rows] for k in keys}, strict=False)


def _counts_metadata(counts: OutcomeCounts) -> dict[str, Any]:
    return {
        "definition": counts.definition,
        "positives": counts.positives,
        "negatives": counts.negatives,
        "dropped": counts.dropped,
        "late_positives": counts.late_positives,
    }
