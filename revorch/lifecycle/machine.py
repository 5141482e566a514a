"""Run a lifecycle state machine over each entity's timeline of proposed moves.

A *point* proposes a stage for an entity at a time. Points are applied in time order:

- ``kind = "set"``: an explicit move (a CRM field set by a person). It moves the entity if
  the state machine allows it, and is reported as forbidden otherwise.
- ``kind = "rule"``: a conditional move. It applies only when the entity is in one of the
  rule's ``from`` stages and has been there at least ``min_days_in_stage``; otherwise it is
  not a move at all. An applicable rule whose move the machine forbids is reported too.

The fold is vectorised: step k applies every entity's k-th point at once, so the cost is a
few array operations per step, not a Python loop per entity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from revorch.lifecycle.config import NEW, StateMachine

POINT_SCHEMA = {
    "entity_id": pl.String,
    "at": pl.Datetime("us", "UTC"),
    "priority": pl.Int32,  # order of points at the same instant (lower first)
    "event_id": pl.String,
    "proposed": pl.String,
    "kind": pl.String,  # set or rule
    "rule": pl.String,
    "decided_by": pl.String,  # rule, human or agent
    "reason": pl.String,
}

_DETAIL = ["entity_id", "at", "event_id", "rule", "decided_by", "reason"]


@dataclass(frozen=True)
class FoldResult:
    transitions: pl.DataFrame  # entity_id, seq, from_stage, to_stage, transitioned_at, ...
    forbidden: pl.DataFrame  # entity_id, from_stage, to_stage, attempted_at, ...
    current: pl.DataFrame  # entity_id, stage, entered_at, decided_by, rule, reason, event_id


def fold(points: pl.DataFrame, machine: StateMachine) -> FoldResult:
    """Apply every entity's points in order; return its moves, refusals and final stage."""
    stages = [NEW, *machine.stages]
    code = {stage: i for i, stage in enumerate(stages)}
    allowed = np.zeros((len(stages), len(stages)), dtype=bool)
    for source, targets in machine.transitions.items():
        for target in targets:
            allowed[code[source], code[target]] = True
    rules = machine.rules
    rule_names = sorted(rules)
    rule_code = {name: i + 1 for i, name in enumerate(rule_names)}  # 0: not a rule
    rule_from = np.zeros((len(rule_names) + 1, len(stages)), dtype=bool)
    rule_min_us = np.zeros(len(rule_names) + 1, dtype=np.int64)
    for name, rule in rules.items():
        for stage in rule.from_:
            rule_from[rule_code[name], code[stage]] = True
        rule_min_us[rule_code[name]] = int(rule.min_days_in_stage * 86_400_000_000)

    points = (
        points.cast(POINT_SCHEMA)
        .filter(pl.col("proposed").is_in(stages))
        .sort("entity_id", "at", "priority", "event_id")
        .with_columns(
            entity=pl.col("entity_id").rank("dense").cast(pl.Int64) - 1,
            step=pl.int_range(pl.len()).over("entity_id"),
            proposed_code=pl.col("proposed").replace_strict(code, return_dtype=pl.Int64),
            rule_code=pl.when(pl.col("kind") == "rule")
            .then(pl.col("rule").replace_strict(rule_code, default=-1, return_dtype=pl.Int64))
            .otherwise(0),
        )
        .sort("step", "entity")
    )
    unknown = points.filter(pl.col("rule_code") == -1)
    if unknown.height:
        raise ValueError(f"points name rules missing from the config: {unknown['rule'].unique()}")

    n_entities = 0 if points.is_empty() else int(points["entity"].max()) + 1
    current = np.zeros(n_entities, dtype=np.int64)
    entered = np.full(n_entities, np.iinfo(np.int64).min, dtype=np.int64)
    entity = points["entity"].to_numpy()
    proposed = points["proposed_code"].to_numpy()
    rule_idx = points["rule_code"].to_numpy()
    at = points["at"].dt.epoch("us").to_numpy()
    steps = 0 if points.is_empty() else int(points["step"].max()) + 1
    bounds = np.searchsorted(points["step"].to_numpy(), np.arange(steps + 1))

    moved_rows, moved_from, refused_rows, refused_from = [], [], [], []
    for step in range(len(bounds) - 1):
        rows = np.arange(bounds[step], bounds[step + 1])
        e, p, r = entity[rows], proposed[rows], rule_idx[rows]
        cur = current[e]
        long_enough = (entered[e] == np.iinfo(np.int64).min) | (
            at[rows] - entered[e] >= rule_min_us[r]
        )
        applies = (r == 0) | (rule_from[r, cur] & long_enough)
        moving = applies & (p != cur)
        ok = moving & allowed[cur, p]
        refused = moving & ~allowed[cur, p]
        moved_rows.append(rows[ok])
        moved_from.append(cur[ok])
        refused_rows.append(rows[refused])
        refused_from.append(cur[refused])
        current[e[ok]] = p[ok]
        entered[e[ok]] = at[rows[ok]]

    names = np.array(stages, dtype=object)
    transitions = (
        _rows(points, moved_rows, moved_from, names)
        .with_columns(seq=pl.int_range(1, pl.len() + 1).over("entity_id").cast(pl.Int32))
        .rename({"at": "transitioned_at"})
    )
    forbidden = _rows(points, refused_rows, refused_from, names).rename({"at": "attempted_at"})
    latest = transitions.group_by("entity_id").agg(pl.all().sort_by("seq").last())
    current_stage = latest.select(
        "entity_id",
        stage="to_stage",
        entered_at="transitioned_at",
        decided_by="decided_by",
        rule="rule",
        reason="reason",
        event_id="event_id",
    )
    return FoldResult(transitions, forbidden, current_stage)


def _rows(
    points: pl.DataFrame, rows: list[np.ndarray], from_codes: list[np.ndarray], names: np.ndarray
) -> pl.DataFrame:
    """The points at these rows as moves: from which stage, to which, in time order."""
    index = np.concatenate(rows) if rows else np.array([], dtype=np.int64)
    codes = np.concatenate(from_codes) if from_codes else np.array([], dtype=np.int64)
    return (
        points[index]
        .with_columns(from_stage=pl.Series(names[codes].tolist(), dtype=pl.String))
        .sort("entity_id", "at", "step")
        .select(*_DETAIL, "from_stage", to_stage="proposed")
    )
