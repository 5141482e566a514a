"""Does metrics/playbook_uplift recover the simulator's known effect? Coverage over replications.

    .venv/bin/python bench/uplift_recovery.py          # 5 CRMs (seeds 1-5), about 2 CPU minutes
    .venv/bin/python bench/uplift_recovery.py --seeds 1 2 --contacts 6000 --replications 20

Each seed is one simulated CRM taken through the real graph (``recover``): the history before
the moment Revorch starts (``START``) is landed and run through ingestion, stages, handoffs,
agents, governance and the dispatcher with the clock at that moment, so every playbook exposes
its contacts then, half of them held out (``SHARE``); the rest of the history is landed, the
stages brought up to date with the clock at its end, and metrics/playbook_uplift materialized.
The simulator raises the MQL -> SQL odds of the contacts ``EFFECT_PLAYBOOK`` treats by
``POINTS`` from ``START`` on and knows, per exposed contact, by how much that raised its chance
of a next stage within the horizon. ``ZERO_PLAYBOOK`` has no effect. The exposed contacts are
split into replications by company (revorch/experiments/recovery.py). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import dagster as dg  # noqa: E402
import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402

from revorch.experiments.recovery import (  # noqa: E402
    Coverage,
    Replication,
    coverage,
    estimate_replications,
)
from revorch.governance.policy import DEFAULT_PATH  # noqa: E402
from revorch.landing import LandingZone  # noqa: E402
from revorch.settings import ELSEWHERE  # noqa: E402
from revorch.simulator import SimulationConfig, history_frame  # noqa: E402
from revorch.simulator.config import DAY  # noqa: E402
from revorch.simulator.pipeline import true_uplift  # noqa: E402
from revorch.simulator.world import build_world  # noqa: E402

EFFECT_PLAYBOOK = "handoff/sla_escalations"  # an escalated MQL is more likely to become an SQL
ZERO_PLAYBOOK = "lead_qualification/send_follow_up"
POINTS = 0.5
SHARE = 0.5  # held out of every playbook (the policy's and the simulator's)
# A short history (the simulator needs about three months for customers and tickets), so that
# many contacts are mid-funnel when Revorch starts; the horizon (30 days) ends before the
# history does.
START, HISTORY, END = "2026-10-01T12:00:00+00:00", "2026-08-01", "2026-11-05"
UPLIFT = dg.AssetKey(["metrics", "playbook_uplift"])


def recovery_config(
    seed: int, contacts: int, *, points: float = POINTS, share: float = SHARE
) -> SimulationConfig:
    return SimulationConfig(
        contacts=contacts,
        seed=seed,
        start=HISTORY,
        end=END,
        playbook_effects=((EFFECT_PLAYBOOK, points),),
        holdout_share=share,
        effects_from=START,
    )


@dataclass(frozen=True)
class Recovery:
    config: SimulationConfig
    # The mature next-stage units of both playbooks, with ``true_effect`` and ``company_rank``
    # (the company in a fixed random order, so that ``company_rank % k`` makes k replications).
    units: pl.DataFrame
    asset_rows: dict[str, tuple]  # per playbook: the asset's own (effect, ci_low, ci_high)
    pooled_truth: dict[str, float]  # per playbook: the true effect over all its mature units
    cpu_seconds: float

    def replications(self, playbook: str, k: int) -> list[Replication]:
        """``playbook``'s units split by company into ``k`` replications, each read out."""
        units = self.units.filter(pl.col("playbook") == playbook)
        return estimate_replications(units.with_columns(replication=pl.col("company_rank") % k))


@contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in (*ELSEWHERE, *values)}
    for name in ELSEWHERE:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _land(zone: LandingZone, source: str, lines: pl.Series) -> None:
    with zone.open_batch(source) as tmp:
        tmp.write_bytes(b"\n".join(lines.to_list()) + b"\n")


def recover(root: Path, config: SimulationConfig) -> Recovery:
    """Take ``config`` through the real graph in ``root`` (module docstring) and keep the
    next-stage units of both playbooks with their true effects."""
    from orch_assets.agents.backtest import MODEL_BACKTEST
    from orch_assets.reports.assets import WEEKLY_REPORT
    from resources import default_resources
    from revorch.definitions import THROUGH_HANDOFFS, materialize

    started = time.process_time()
    start = datetime.fromisoformat(config.effects_from)
    end = datetime.fromisoformat(config.end).replace(tzinfo=UTC)
    lines = history_frame(config)
    zone = LandingZone(root / "landing").ensure()
    _land(zone, config.source, lines.filter(pl.col("occurred_at") <= start)["line"])
    policy = yaml.safe_load(DEFAULT_PATH.read_text())
    policy["holdouts"] |= {
        "default_share": config.holdout_share,
        "maximum_customer_facing_share": max(0.2, config.holdout_share),
    }
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    home = {"REVORCH_HOME": str(root), "REVORCH_POLICY": str(root / "policy.yaml")}
    # Everything that decides, as revorch_main runs it, without the weekly products.
    decide = (
        dg.AssetSelection.all().without_checks()
        - dg.AssetSelection.assets(MODEL_BACKTEST, WEEKLY_REPORT, UPLIFT)
        - dg.AssetSelection.key_prefixes(["analytics"])
    )
    with dg.instance_for_test() as instance:
        with _environment(home | {"REVORCH_CLOCK": start.isoformat()}):
            materialize(decide, resources=default_resources(), instance=instance)
        _land(zone, config.source, lines.filter(pl.col("occurred_at") > start)["line"])
        with _environment(home | {"REVORCH_CLOCK": end.isoformat()}):
            materialize(
                THROUGH_HANDOFFS | dg.AssetSelection.assets(UPLIFT),
                resources=default_resources(),
                instance=instance,
            )
    with duckdb.connect(str(root / "revorch.duckdb"), read_only=True) as conn:
        units = conn.execute(
            "SELECT playbook, entity_id, arm, value, covariate, epoch(exposed_at) AS exposed, "
            "horizon_days FROM metrics.playbook_units "
            "WHERE mature AND outcome = 'next_stage' AND playbook IN (?, ?)",
            [EFFECT_PLAYBOOK, ZERO_PLAYBOOK],
        ).pl()
        asset_rows = {
            playbook: (effect, low, high)
            for playbook, effect, low, high in conn.execute(
                "SELECT playbook, effect, ci_low, ci_high FROM metrics.playbook_uplift "
                "WHERE outcome = 'next_stage'"
            ).fetchall()
        }
    world = build_world(config)
    contact = np.asarray([int(e.removeprefix("c-")) - 1 for e in units["entity_id"]])
    company = world.population.contacts.company[contact]
    truth = np.zeros(units.height)
    for playbook in (EFFECT_PLAYBOOK, ZERO_PLAYBOOK):
        rows = (units["playbook"] == playbook).to_numpy()
        truth[rows] = true_uplift(
            config,
            world.funnel.conversion,
            playbook,
            contact[rows],
            units["exposed"].to_numpy()[rows].astype(np.int64),
            int(units["horizon_days"][0]) * DAY,
        )
    # Companies never share contacts; a fixed random order spreads them over replications.
    order = np.random.default_rng([config.seed, 15]).permutation(int(company.max()) + 1)
    units = units.with_columns(company_rank=pl.Series(order[company]), true_effect=pl.Series(truth))
    return Recovery(
        config=config,
        units=units,
        asset_rows=asset_rows,
        pooled_truth={
            p: float(units.filter(pl.col("playbook") == p)["true_effect"].mean())
            for p in (EFFECT_PLAYBOOK, ZERO_PLAYBOOK)
        },
        cpu_seconds=time.process_time() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--contacts", type=int, default=6_000)
    parser.add_argument("--replications", type=int, nargs="+", default=[10, 20])
    args = parser.parse_args()
    from ingest import machine

    splits = [(p, k) for p in (EFFECT_PLAYBOOK, ZERO_PLAYBOOK) for k in args.replications]
    together: dict[tuple[str, int], list[Replication]] = {split: [] for split in splits}
    print(f"Machine: {machine()}")
    print(
        f"{args.contacts:,} contacts per CRM, {SHARE:.0%} held out, effect {POINTS:+.2f} on "
        f"{EFFECT_PLAYBOOK}, none on {ZERO_PLAYBOOK}\n"
    )
    covered_head = " | ".join(f"covered of {k}" for k in args.replications)
    print(f"| seed | playbook | asset estimate [95% CI] | true | {covered_head} | CPU s |")
    print("|---:|---|---|---:|" + "---:|" * len(args.replications) + "---:|")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="uplift-recovery-") as folder:
            result = recover(Path(folder), recovery_config(seed, args.contacts))
        for playbook in (EFFECT_PLAYBOOK, ZERO_PLAYBOOK):
            cells = []
            for k in args.replications:
                reps = result.replications(playbook, k)
                together[playbook, k] += reps
                c = coverage(reps)
                cells.append(f"{c.covered}/{c.replications}")
            effect, low, high = result.asset_rows[playbook]
            print(
                f"| {seed} | {playbook} | {effect:+.3f} [{low:+.3f}, {high:+.3f}] | "
                f"{result.pooled_truth[playbook]:+.3f} | {' | '.join(cells)} | "
                f"{result.cpu_seconds:.0f} |"
            )
    print(
        "\n| playbook | replications | exposed / held out per replication | mean true effect "
        "| mean error (SE) | covered |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for (playbook, _), reps in together.items():
        c: Coverage = coverage(reps)
        print(
            f"| {playbook} | {c.replications} | {c.exposed_per_replication:.0f} / "
            f"{c.holdout_per_replication:.0f} | {c.mean_true_effect:+.3f} | "
            f"{c.mean_error:+.4f} ({c.error_std_error:.4f}) | {c.rate:.1%} |"
        )


if __name__ == "__main__":
    main()
