"""Models benchmark: each offline model against plain scikit-learn baselines.

    .venv/bin/python bench/models.py                     # 20,000 simulated contacts + telco
    .venv/bin/python bench/models.py --contacts 5000
    .venv/bin/python bench/models.py --skip-simulator    # the real sample only (about 1 minute)

1. Simulator: a 20,000-contact CRM (seed 42, 2025-01-01 to 2026-11-01, on its own data clock)
   through the stages, then ``backtest_models`` (what ``revorch backtest --model all`` prints):
   each model trained on the earlier history, calibrated on that period's newest fifth, tested
   on the last 30%, beside a logistic regression and gradient boosting on the same features
   and split.
2. Real data: IBM's Telco customer churn sample (bench/data/telco_churn/, Apache-2.0),
   imported with ``revorch import --mapping telco_churn`` into an empty home and ingested;
   every subscription's fields and custom properties are read back from the state store and
   declared as the renewal learner's features (a snapshot has no dates: the split is a seeded
   shuffle, 70% train, 30% test). The product is Revorch's renewal learner
   (``LogisticModel``, calibrated on the newest fifth of its training rows).

Prints a markdown table row per model and scorer, and the machine's load (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(Path(__file__).resolve().parent)]

import dagster as dg  # noqa: E402
import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from revorch import clock  # noqa: E402
from revorch.agents.model_backtest import ModelBacktest, backtest_models, compare  # noqa: E402
from revorch.agents.offline.history import Examples  # noqa: E402
from revorch.agents.offline.logistic import FeatureSpec, LogisticModel  # noqa: E402
from revorch.agents.offline.renewal_model import RenewalModel  # noqa: E402
from revorch.agents.scoring import ScoringConfig  # noqa: E402
from revorch.definitions import THROUGH_HANDOFFS, materialize  # noqa: E402
from revorch.landing import LandingZone  # noqa: E402
from revorch.simulator import SimulationConfig, simulate_history  # noqa: E402

TELCO = ROOT / "bench" / "data" / "telco_churn"
# The sample's columns as the mapping lands them (config/mappings/telco_churn.yaml).
TELCO_FEATURES = FeatureSpec(
    numeric=("tenure_months", "monthly_charges"),
    log_numeric=("total_charges",),
    categorical=(
        "plan",
        "internet_service",
        "online_security",
        "online_backup",
        "device_protection",
        "tech_support",
        "streaming_tv",
        "streaming_movies",
        "phone_service",
        "multiple_lines",
        "paperless_billing",
        "payment_method",
        "senior_citizen",
        "partner",
        "dependents",
        "gender",
    ),
)


def simulator(contacts: int, work: Path) -> list[ModelBacktest]:
    config = SimulationConfig(contacts=contacts, seed=42, start="2025-01-01", end="2026-11-01")
    zone = LandingZone(work / "landing").ensure()
    database = work / "revorch.duckdb"
    started = time.perf_counter()
    simulate_history(zone, config)
    materialize(THROUGH_HANDOFFS, database=database, landing=zone.root, clock=clock.DATA)
    print(f"simulated and staged {contacts:,} contacts in {time.perf_counter() - started:.0f} s")
    conn = duckdb.connect(str(database), read_only=True)
    conn.execute("SET TimeZone = 'UTC'")
    clock.bind(conn, clock.DATA)
    started = time.perf_counter()
    reports, skipped = backtest_models(conn)
    print(f"backtested in {time.perf_counter() - started:.0f} s; skipped: {skipped or 'none'}")
    conn.close()
    return reports


def telco(work: Path) -> ModelBacktest:
    """The telco sample through ``revorch import`` and ingestion, then the renewal learner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    subprocess.run(
        [sys.executable, "-m", "revorch.cli", "import", "--mapping", "telco_churn", str(TELCO)],
        env={**env, "REVORCH_HOME": str(work)},
        check=True,
        capture_output=True,
    )
    ingestion = dg.AssetSelection.groups("ingestion", "crm_state").without_checks()
    materialize(ingestion, database=work / "revorch.duckdb", landing=work / "landing")
    with duckdb.connect(str(work / "revorch.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT object_id, properties FROM change_log WHERE object_type = 'subscription' "
            "ORDER BY object_id"
        ).fetchall()
    records = [{"id": object_id, **json.loads(properties)} for object_id, properties in rows]
    keys = [*TELCO_FEATURES.numeric, *TELCO_FEATURES.log_numeric, *TELCO_FEATURES.categorical]
    frame = pl.DataFrame({k: [r.get(k) for r in records] for k in keys}, strict=False)
    labels = np.asarray([int(r["status"] == "churned") for r in records])
    # No dates in a snapshot: a seeded shuffle stands for time (train, calibrate, test).
    order = np.random.default_rng(14).permutation(len(records))
    times = np.datetime64("2020-01-01") + np.argsort(order).astype("timedelta64[m]")
    history = Examples.ordered("renewal", frame, labels, times, TELCO_FEATURES)
    train, test = history.split_newest(0.3)

    def fit(kind: str, examples: Examples) -> RenewalModel:
        return RenewalModel(LogisticModel.fit(examples.frame, examples.labels, examples.spec))

    return compare(
        "renewal",
        train,
        test,
        ScoringConfig(),
        split=test.times[0],
        fit=fit,
        outcome="telco customer churned (IBM sample, 3,000 rows, declared custom properties)",
        ordered_by="a seeded shuffle: a snapshot has no dates",
    )


def table(rows: list[tuple[str, ModelBacktest]]) -> str:
    lines = [
        "| data | model | scorer | train / test | base rate test | AUC | top-decile precision "
        "| lift | Brier | mean predicted |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for data, report in rows:
        for s in report.scores:
            lines.append(
                f"| {data} | {report.kind} | {s.name} | {report.n_train:,} / {report.n_test:,} "
                f"| {report.base_rate_test:.1%} | {s.auc:.3f} | {s.precision_at_top_decile:.1%} "
                f"| {s.lift_at_top_decile:.1f}x | {s.brier:.4f} | {s.mean_predicted:.1%} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--skip-simulator", action="store_true")
    args = parser.parse_args()
    rows: list[tuple[str, ModelBacktest]] = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        if not args.skip_simulator:
            for report in simulator(args.contacts, Path(tmp) / "sim"):
                rows.append((f"simulator {args.contacts:,}", report))
        rows.append(("telco sample", telco(Path(tmp) / "telco")))
    for _, report in rows:
        print(report.to_text(), end="\n\n")
    print(table(rows))
    print("\nload:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
