"""The lifecycle state machine: allowed moves, conditional rules, forbidden moves reported."""

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from revorch.lifecycle.config import DEFAULT_PATH, LifecycleConfigError, load_lifecycle_config
from revorch.lifecycle.machine import fold

CONFIG = load_lifecycle_config()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def point(entity, day, proposed, kind="set", rule="crm:lifecycle_stage", priority=0, by="human"):
    return {
        "entity_id": entity,
        "at": T0 + timedelta(days=day),
        "priority": priority,
        "event_id": f"{entity}-{day}-{proposed}",
        "proposed": proposed,
        "kind": kind,
        "rule": rule,
        "decided_by": by,
        "reason": None,
    }


def run(*points):
    contacts = CONFIG.contacts
    return fold(pl.DataFrame(list(points)), contacts)


def path(result, entity):
    rows = result.transitions.filter(pl.col("entity_id") == entity).sort("seq")
    return [rows["from_stage"][0], *rows["to_stage"].to_list()] if rows.height else []


def test_allowed_moves_are_applied_in_time_order_whatever_the_input_order():
    result = run(point("c", 5, "sql"), point("c", 0, "lead"), point("c", 2, "mql"))
    assert path(result, "c") == ["new", "lead", "mql", "sql"]
    assert result.current.row(0, named=True)["stage"] == "sql"
    assert result.current.row(0, named=True)["entered_at"] == T0 + timedelta(days=5)
    assert result.forbidden.height == 0


def test_a_forbidden_move_is_never_applied_and_is_reported():
    result = run(point("c", 0, "lead"), point("c", 1, "customer"), point("c", 2, "mql"))
    assert path(result, "c") == ["new", "lead", "customer"]
    [refused] = result.forbidden.to_dicts()
    assert (refused["from_stage"], refused["to_stage"]) == ("customer", "mql")
    assert refused["attempted_at"] == T0 + timedelta(days=2)
    assert result.current["stage"].to_list() == ["customer"]


@pytest.mark.parametrize(
    ("start", "rule", "moves_to"),
    [
        ("lead", "engagement_mql", "mql"),
        ("mql", "engagement_mql", None),  # only from lead
        ("sql", "deal_created", "opportunity"),
        ("customer", "deal_created", None),
        ("opportunity", "deal_won", "customer"),
        ("opportunity", "deal_lost_recycle", "lead"),
        ("sql", "deal_lost_recycle", None),
    ],
)
def test_rules_apply_only_from_their_stages(start, rule, moves_to):
    to = CONFIG.contacts.rules[rule].to
    result = run(point("c", 0, start), point("c", 1, to, kind="rule", rule=rule, by="rule"))
    expected = ["new", start] + ([moves_to] if moves_to else [])
    assert path(result, "c") == expected
    assert result.forbidden.height == 0


def test_recycling_a_disqualified_contact_waits_for_its_minimum_days():
    too_soon = run(
        point("c", 0, "lead"),
        point("c", 1, "disqualified", rule="crm:lead_status"),
        point("c", 10, "lead", kind="rule", rule="buying_signal_recycle", by="rule"),
    )
    assert path(too_soon, "c") == ["new", "lead", "disqualified"]
    later = run(
        point("c", 0, "lead"),
        point("c", 1, "disqualified", rule="crm:lead_status"),
        point("c", 40, "lead", kind="rule", rule="buying_signal_recycle", by="rule"),
    )
    assert path(later, "c") == ["new", "lead", "disqualified", "lead"]
    last = later.transitions.sort("seq")[-1].to_dicts()[0]
    assert (last["decided_by"], last["rule"]) == ("rule", "buying_signal_recycle")


def test_points_at_the_same_instant_follow_their_priority():
    result = run(point("c", 0, "mql", priority=2), point("c", 0, "lead", priority=0))
    assert path(result, "c") == ["new", "lead", "mql"]


def test_entities_are_independent():
    result = run(
        point("a", 0, "lead"), point("b", 0, "lead"), point("b", 1, "sql"), point("a", 3, "mql")
    )
    assert path(result, "a") == ["new", "lead", "mql"]
    assert path(result, "b") == ["new", "lead", "sql"]


def test_a_config_naming_an_unknown_stage_is_refused_with_a_clear_error(tmp_path):
    broken = tmp_path / "lifecycle.yaml"
    original = DEFAULT_PATH.read_text()
    broken.write_text(original.replace("lead: [mql, sql,", "lead: [mqll, sql,", 1))
    with pytest.raises(LifecycleConfigError, match="unknown stage 'mqll'"):
        load_lifecycle_config(broken)


def test_a_config_with_a_misspelt_key_is_refused(tmp_path):
    broken = tmp_path / "lifecycle.yaml"
    broken.write_text(DEFAULT_PATH.read_text().replace("mql_threshold:", "mql_treshold:"))
    with pytest.raises(LifecycleConfigError, match="mql_treshold"):
        load_lifecycle_config(broken)
