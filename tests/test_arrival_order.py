"""Events may arrive in any order, more than once, over many runs: what Revorch derives from
them is the same once they are all in.

A small simulated CRM is delivered through the real asset graph (``dg.materialize`` of the
pipeline assets and their checks, into a DuckDB file under a temporary REVORCH_HOME): once in
order, in one run, and again shuffled, split into batches over several runs, each event
delivered up to three times. Every stage and handoff table, every agent's inputs and the
actions Revorch proposes from what it knows are compared. The clock of the comparison is the
data clock (the newest change), which is the same once every event is in.
"""

from __future__ import annotations

import json
import random
from functools import cache, partial
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CrmHome, StateCopy, copied_state, read_state
from orch_assets.agents.assets import OFFLINE_MODELS
from orch_assets.agents.backtest import MODEL_BACKTEST
from orch_assets.governance.assets import PROPOSED_ACTIONS
from orch_assets.stages.checks import stage_checks
from resources import default_resources
from revorch.agents import models
from revorch.agents.offline import inputs
from revorch.definitions import pipeline_assets
from revorch.governance.actions import propose
from revorch.landing import LandingZone
from revorch.lifecycle.config import load_lifecycle_config
from revorch.simulator import SimulationConfig, history_frame

# Seed 6 gives rows in every stage and handoff table at this size (checked in `in_order`).
CRM = SimulationConfig(contacts=300, seed=6)
# Every asset that derives from the events, up to the proposed actions. (Metrics and reports
# only read the stages; the steps after the outbox act on actions, and the offline models are
# retrained daily, not per run: here none is trained and the agents decide by their rules;
# their daily backtest decides nothing.)
SELECTION = (
    dg.AssetSelection.groups("ingestion", "crm_state", "stages", "handoffs", "agents")
    | dg.AssetSelection.assets(PROPOSED_ACTIONS)
) - dg.AssetSelection.assets(OFFLINE_MODELS, MODEL_BACKTEST)
WAITING = dg.AssetKey(["stages", "waiting_references"])

DERIVED_TABLES = [
    "stages.entity_stages",
    "stages.stage_transitions",
    "stages.forbidden_transitions",
    "stages.leads",
    "stages.mqls",
    "stages.sqls",
    "stages.opportunities",
    "stages.customers",
    "stages.onboarding",
    "stages.onboarding_progress",
    "stages.adoption_health",
    "stages.renewals",
    "stages.expansion",
    "stages.waiting_references",
    "handoffs.follow_up_cadence",
    "handoffs.sla_escalations",
    "handoffs.renewal_risk",
]


def crm_events(*object_types: str) -> list[dict]:
    """The simulated CRM's events (of these object types, or all), in the simulator's order."""
    return [e for e in _events() if not object_types or e["object_type"] in object_types]


@cache
def _events() -> tuple[dict, ...]:
    lines = history_frame(CRM).filter(pl.col("malformed").is_null())["line"]
    return tuple(json.loads(line) for line in lines)


def _no_model(kind: str, *args, **kwargs):
    raise ValueError(f"no {kind} model in this test: the agents decide by their rules")


class Revorch:
    """One Revorch installation: a REVORCH_HOME with its landing zone and DuckDB file, run
    through the real asset graph on a real (temporary) Dagster instance."""

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.home = home
        # No offline model: an agent run trains a missing one once a clock day, on the history
        # of that moment, which a delivery split over runs changes; the rules decide instead.
        monkeypatch.setattr(models, "train_model", _no_model)
        monkeypatch.setenv("REVORCH_HOME", str(home))
        for name in ("REVORCH_DB", "REVORCH_LANDING", "REVORCH_OUTBOX", "REVORCH_AUDIT_ANCHOR"):
            monkeypatch.delenv(name, raising=False)
        self.resources = default_resources()
        self.zone = LandingZone(home / "landing").ensure()
        self.database = home / "revorch.duckdb"

    def deliver(self, events: list[dict]) -> None:
        self.zone.write_events("crm", events)

    def run(
        self, instance: dg.DagsterInstance, selection: dg.AssetSelection = SELECTION
    ) -> dg.ExecuteInProcessResult:
        """One run of the asset graph and its checks; no blocking check may fail."""
        result = dg.materialize(
            [*pipeline_assets, *stage_checks],
            selection=selection,
            resources=self.resources,
            instance=instance,
            raise_on_error=False,
        )
        failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
        blocking = [
            e.check_name
            for e in result.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
        ]
        assert result.success and not blocking, (failed, blocking)
        return result

    def connect(self, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        """Its DuckDB file, or on DuckLake the lake the environment names."""
        return read_state(self.database) if read_only else CrmHome(self.home).connect()


def derived(revorch: Revorch, tmp: Path, state_copy: StateCopy) -> dict[str, object]:
    """Every table Revorch derives, each as a sorted list of rows, plus every agent's inputs
    and the actions Revorch proposes from what it knows (on a copy, ``state_copy``:
    proposing writes)."""
    tables = {}
    with revorch.connect() as conn:
        for table in DERIVED_TABLES:
            tables[table] = sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        tables["inputs/lead_qualification"] = inputs.lead_inputs(conn)
        tables["inputs/deal_risk"] = inputs.deal_inputs(conn)
        tables["inputs/ticket_triage"] = inputs.ticket_inputs(conn)
        tables["inputs/renewal_risk"] = inputs.renewal_inputs(conn, config=load_lifecycle_config())
        tables["inputs/onboarding_plan"] = inputs.onboarding_inputs(conn)
    with (
        state_copy(revorch.database, tmp / "proposals" / "revorch.duckdb") as copy,
        CrmHome(copy.parent).connect() as conn,
    ):
        conn.execute("DELETE FROM governance.actions")
        propose(conn, run_id="compare", anchor_path=tmp / "anchor")
        tables["governance.actions"] = conn.execute(
            "SELECT action_id, action_type, source, entity_type, entity_id, company_id, "
            "payload->'to' AS recipient, payload, facts FROM governance.actions "
            "ORDER BY action_id"
        ).fetchall()
    (tmp / "anchor").unlink(missing_ok=True)
    return tables


@pytest.fixture(scope="module")
def in_order(tmp_path_factory, request) -> dict[str, object]:
    """The CRM delivered once, in order, in one run. Into a DuckDB file also with
    ``--state-backend ducklake``, on purpose (a module fixture, it starts before
    ``state_backend`` names a lake): there the deliveries out of order, each into a lake of
    its own, must derive what the file derived in order."""
    home = tmp_path_factory.mktemp("in_order")
    with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
        monkeypatch.delenv("REVORCH_STATE_BACKEND", raising=False)
        revorch = Revorch(home, monkeypatch)
        revorch.deliver(crm_events())
        revorch.run(instance)
        tables = derived(revorch, home, partial(copied_state, request))
    # The comparison is only as strong as what it compares: every table has rows but these
    # (nothing waits once all is in; no move is refused; every ticket is closed and every
    # onboarding activated by the end of this history).
    empty = {name for name, rows in tables.items() if not rows}
    assert empty <= {
        "stages.waiting_references",
        "stages.forbidden_transitions",
        "inputs/ticket_triage",
        "inputs/onboarding_plan",
    }
    return tables


@settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    batches=st.integers(2, 6),
    runs=st.integers(2, 3),
)
def test_any_order_and_redelivery_derive_the_same_tables(
    in_order, tmp_path_factory, own_lake, state_copy, seed, batches, runs
):
    rng = random.Random(seed)
    events = [e for e in crm_events() for _ in range(rng.randint(1, 3))]
    rng.shuffle(events)
    cuts = sorted(rng.sample(range(1, len(events)), batches - 1))
    parts = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    home = tmp_path_factory.mktemp("shuffled")
    with (
        own_lake(home / "lake"),  # each delivery its own store, as its own file (home)
        pytest.MonkeyPatch.context() as monkeypatch,
        dg.instance_for_test() as instance,
    ):
        revorch = Revorch(home, monkeypatch)
        for run in range(runs):
            for part in parts[run::runs]:
                revorch.deliver(part)
            revorch.run(instance)
        shuffled = derived(revorch, home, state_copy)
    for name, rows in in_order.items():
        assert shuffled[name] == rows, name


def metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, object]:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_records_wait_visibly_for_what_has_not_arrived_and_complete_when_it_does(
    in_order, tmp_path, monkeypatch, state_copy
):
    """A CRM without companies or owners (B2C, an export without owners) runs green on every
    run; contacts and deals wait for their company and owner, visibly, and no action goes to
    a record that waits. When companies, then owners, arrive, everything is as if in order."""
    people = ("contact", "deal", "activity", "ticket", "subscription")
    with dg.instance_for_test() as instance:
        revorch = Revorch(tmp_path, monkeypatch)
        revorch.deliver(crm_events(*people))
        first = revorch.run(instance)

        with revorch.connect() as conn:
            waiting = conn.execute(
                "SELECT record_type, reference, missing_type, count(*), "
                "count(*) FILTER (WHERE waiting_since IS NULL) "
                "FROM stages.waiting_references GROUP BY ALL"
            ).fetchall()
            stages = conn.execute("SELECT count(*) FROM stages.entity_stages").fetchone()[0]
            acting_on_waiting = conn.execute(
                "SELECT count(*) FROM governance.actions AS a "
                "JOIN stages.waiting_references AS w "
                "ON w.record_id = a.entity_id AND w.record_type = a.entity_type"
            ).fetchone()[0]
        kinds = {(record, reference) for record, reference, *_ in waiting}
        assert {("contact", "company_id"), ("contact", "owner_id"), ("deal", "owner_id")} <= kinds
        assert all(missing in ("company", "owner") for _, _, missing, _, _ in waiting)
        assert all(undated == 0 for *_, undated in waiting)  # each says since when
        assert stages > 0 and acting_on_waiting == 0
        total = sum(n for *_, n, _ in waiting)
        records = metadata(first, WAITING)["records_waiting"]
        assert 0 < records <= total
        warning = {e.check_name: e for e in first.get_asset_check_evaluations()}[
            "references_are_known"
        ]
        assert (warning.passed, warning.severity) == (False, dg.AssetCheckSeverity.WARN)
        assert warning.metadata["failing/no record waits"].value == total

        revorch.deliver(crm_events("company"))  # contacts came before their companies
        revorch.run(instance)  # and still no owner at all: green again
        with revorch.connect() as conn:
            left = conn.execute(
                "SELECT DISTINCT missing_type FROM stages.waiting_references"
            ).fetchall()
        assert left == [("owner",)]  # deals came before their owners

        revorch.deliver(crm_events("owner"))
        done = revorch.run(instance)
        assert metadata(done, WAITING)["records_waiting"] == 0
        completed = derived(revorch, tmp_path, state_copy)
    for name, rows in in_order.items():
        assert completed[name] == rows, name


def test_corruption_still_fails_its_check(tmp_path, monkeypatch):
    """Waiting is not a licence: a stage for a contact Revorch never received fails its
    blocking check, and the stages after it are not built."""
    lifecycle = dg.AssetKey(["stages", "contact_lifecycle"])
    leads = dg.AssetKey(["stages", "leads"])
    with dg.instance_for_test() as instance:
        revorch = Revorch(tmp_path, monkeypatch)
        revorch.deliver(crm_events("contact", "deal", "activity"))
        revorch.run(
            instance,
            dg.AssetSelection.groups("ingestion", "crm_state")
            | dg.AssetSelection.assets(lifecycle, dg.AssetKey(["stages", "account_lifecycle"])),
        )
        with revorch.connect(read_only=False) as conn:
            conn.execute(
                "UPDATE stages.entity_stages SET entity_id = 'c-ghost' WHERE entity_id = "
                "(SELECT min(entity_id) FROM stages.entity_stages WHERE entity_type = 'contact')"
            )
        # Nothing new arrived, so the state machine leaves the corrupt row as it is; a row
        # changed behind its back is outside the changed slice: the full check finds it.
        result = dg.materialize(
            [*pipeline_assets, *stage_checks],
            selection=dg.AssetSelection.assets(lifecycle, leads),
            resources=revorch.resources,
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {"stages__contact_lifecycle_quality": {"config": {"full_check": True}}}
            },
        )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed = checks["contact_stages_are_valid"]
    assert (failed.passed, failed.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert failed.metadata["failing/entity_id exists in contacts"].value == 1
    assert "entity_id=c-ghost" in failed.metadata["failing_rows"].value
    assert not result.success
    built = {e.asset_key for e in result.get_asset_materialization_events()}
    assert built == {lifecycle}  # stages/leads was not built on it
