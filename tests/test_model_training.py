"""The agents train an offline model only when it is missing or stale: one kind at a time, a
history too short for a kind tried once per clock day, nothing written to a read-only copy."""

from collections import Counter

import dagster as dg
import duckdb
import pytest

from conftest import read_state
from revorch import clock
from revorch.agents import models as stored
from revorch.agents.features import ModelsConfig
from revorch.agents.models import offline_tier, stored_tier

AGENT_RUNS = 5  # every agent asks for the tier once per run
TODAY = "2026-11-20T09:00:00+00:00"
TOMORROW = "2026-11-21T09:00:00+00:00"


@pytest.fixture
def trained(monkeypatch):
    """Counts the models trained, by kind, through the real training."""
    calls: Counter[str] = Counter()
    train = stored.train_model

    def counted(kind, conn, **kwargs):
        calls[kind] += 1
        return train(kind, conn, **kwargs)

    monkeypatch.setattr(stored, "train_model", counted)
    return calls


@pytest.fixture
def no_renewals(copy_crm):
    """The shared CRM's stages with no models stored and no subscription history: too short
    for a renewal model."""
    home = copy_crm("stages")
    with home.connect() as conn:
        conn.execute("DELETE FROM agents.models")
        conn.execute("DELETE FROM subscriptions")
    return home


def agents_run(conn: duckdb.DuckDBPyConnection, models: ModelsConfig | None = None):
    return [offline_tier(conn, models=models) for _ in range(AGENT_RUNS)]


def test_a_kind_the_history_is_too_short_for_is_tried_once_a_day(no_renewals, trained):
    with no_renewals.connect() as conn:
        clock.bind(conn, TODAY)
        tiers = agents_run(conn)
        # One run: each kind trained once, not once per agent.
        assert trained == {"lead": 1, "deal": 1, "renewal": 1}
        assert all(t.renewal_model is None and t.lead_model is not None for t in tiers)
        why = tiers[0].untrained["renewal_risk"]
        assert all(t.untrained == {"renewal_risk": why} for t in tiers)
        models = conn.execute("SELECT count(*) FROM agents.models").fetchone()[0]

        trained.clear()
        agents_run(conn)  # a second run the same day trains nothing
        assert trained == {}
        assert conn.execute("SELECT count(*) FROM agents.models").fetchone()[0] == models

        clock.bind(conn, TOMORROW)  # the next day the missing kind alone is tried again
        assert agents_run(conn)[-1].untrained == {"renewal_risk": why}
        assert trained == {"renewal": 1}


def test_a_changed_declaration_retrains_only_that_kind(no_renewals, trained):
    shipped = ModelsConfig()
    fewer = shipped.deal.model_copy(update={"features": shipped.deal.features[:-1]})
    declared = shipped.model_copy(update={"deal": fewer})
    assert declared.deal.key() != shipped.deal.key()
    with no_renewals.connect() as conn:
        clock.bind(conn, TODAY)
        before = agents_run(conn)[0]
        trained.clear()
        after = agents_run(conn, declared)
        assert trained == {"deal": 1}
        assert after[0].deal_model.version != before.deal_model.version
        assert after[0].deal_model.metadata["definition"] == declared.deal.key()
        assert after[-1].lead_model.version == before.lead_model.version
        kinds = conn.execute("SELECT kind, count(*) FROM agents.models GROUP BY kind").fetchall()
        assert dict(kinds) == {"lead": 1, "deal": 2}


def test_a_replay_reads_the_stored_models_of_a_read_only_copy(no_renewals, trained):
    with no_renewals.connect() as conn:
        clock.bind(conn, TODAY)
        lead = offline_tier(conn).lead_model.version
    trained.clear()
    with read_state(no_renewals.database) as copy:  # read-only: the file, or this test's lake
        tier = stored_tier(copy)
    assert trained == {}
    assert tier.model_version("lead_qualification") == lead
    assert tier.renewal_model is None


def test_a_second_agents_run_of_the_real_graph_trains_nothing(no_renewals, trained):
    from revorch.definitions import materialize

    agents = dg.AssetSelection.key_prefixes(["agents"]) - dg.AssetSelection.keys(
        ["agents", "offline_models"], ["agents", "model_backtest"]
    )

    def run() -> None:
        result = materialize(
            agents, database=no_renewals.database, landing=no_renewals.landing.root, clock=TODAY
        )
        assert result.success

    run()
    assert trained == {"lead": 1, "deal": 1, "renewal": 1}  # five agents, one try per kind
    trained.clear()
    run()
    assert trained == {}
