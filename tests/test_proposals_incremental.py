"""Proposals look only at what changed since the last one (revorch/governance/open_items.py),
and find exactly what a proposal from scratch finds."""

from __future__ import annotations

import shutil

import dagster as dg
import duckdb
import yaml

from conftest import SHARED_CRM, STEPS, CrmHome
from orch_assets.governance.assets import PROPOSED_ACTIONS
from resources import AgentsConfigResource
from revorch.agents.config import DEFAULT_PATH
from revorch.definitions import materialize
from revorch.governance import open_items
from revorch.governance.actions import propose
from revorch.governance.policy import load_policy
from revorch.governance.screen import Screen
from revorch.governance.verdicts import judge
from revorch.simulator import stream_live

# What an action is, without when and by which run it was proposed.
ACTION_COLUMNS = (
    "action_id, action_type, source, decision_id, entity_type, entity_id, company_id, reason, "
    "CAST(payload AS VARCHAR), CAST(facts AS VARCHAR), status"
)


def _actions(conn: duckdb.DuckDBPyConnection, run_id: str) -> list[tuple]:
    return conn.execute(
        f"SELECT {ACTION_COLUMNS} FROM governance.actions WHERE proposed_run_id = ? "
        "ORDER BY action_id",
        [run_id],
    ).fetchall()


def _open_items(conn: duckdb.DuckDBPyConnection) -> list[tuple]:
    return conn.execute("SELECT * FROM governance.open_items ORDER BY ALL").fetchall()


def test_an_incremental_proposal_finds_what_one_from_scratch_finds(copy_crm, tmp_path, state_copy):
    home = copy_crm("governed")  # proposed once already: the watermarks are set
    # New and changed records of every kind, through the stages and the agents.
    for _ in stream_live(
        home.landing, SHARED_CRM, events_per_batch=400, interval_seconds=0, max_batches=2
    ):
        pass
    materialize(
        STEPS["stages"] | STEPS["decided"], database=home.database, landing=home.landing.root
    )
    # Each on its own copy of the home's state (state_copy: on DuckLake, a second lake).
    # The incremental one reads again only the items touched since the last proposal.
    with (
        state_copy(home.database, tmp_path / "planned" / "revorch.duckdb") as planned,
        CrmHome(planned.parent).connect() as conn,
    ):
        total = conn.execute("SELECT count(*) FROM governance.open_items").fetchone()[0]
        refreshed = open_items.refresh(conn)
        assert refreshed.everything == frozenset()
        assert 0 < refreshed.items.height < total
        assert refreshed.decided_after is not None
    with (
        state_copy(home.database, tmp_path / "scratch" / "revorch.duckdb") as scratch,
        CrmHome(scratch.parent).connect() as conn,
    ):
        full = propose(conn, run_id="full", anchor_path=None, full=True)
        proposed_from_scratch = _actions(conn, "full")
        items_from_scratch = _open_items(conn)

    with home.connect() as conn:
        incremental = propose(conn, run_id="incremental", anchor_path=None)
        proposed_incrementally = _actions(conn, "incremental")
        items_incrementally = _open_items(conn)

    assert incremental > 0  # the changes called for new actions
    assert incremental == full
    assert proposed_incrementally == proposed_from_scratch
    assert items_incrementally == items_from_scratch

    # Proposing again with nothing new adds nothing, and reads no item again.
    with home.connect() as conn:
        assert propose(conn, run_id="again", anchor_path=None) == 0
        assert open_items.refresh(conn).items.height == 0


def test_the_batched_verdicts_are_the_ones_each_action_gets_alone(copy_crm):
    """judge_proposed screens each text once and updates actions in batches; every action's
    recorded verdict is still what the policy and a fresh screen give that action alone."""
    home = copy_crm("governed")
    policy = load_policy()
    with home.connect() as conn:
        cursor = conn.execute(
            "SELECT action_id, action_type, source, entity_type, entity_id, company_id, "
            "CAST(facts AS VARCHAR) AS facts, CAST(payload AS VARCHAR) AS payload, verdict, "
            "status, verdict_rules, approval_due_at IS NOT NULL AS due "
            "FROM governance.actions WHERE source <> 'governance' ORDER BY action_id"
        )
        names = [column[0] for column in cursor.description]
        actions = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        assert len({a["verdict"] for a in actions}) >= 3  # a varied store
        for action in actions:
            if action["verdict"] == "withhold":
                assert action["status"] == "withheld"
                continue
            alone = judge(policy, action, Screen.from_state(conn))
            assert (action["verdict"], action["verdict_rules"]) == (
                alone.verdict,
                list(alone.rules),
            ), action["action_id"]
            assert action["due"] == (alone.verdict == "approve")


def test_decisions_under_the_users_feature_declarations_are_proposed(copy_crm, tmp_path):
    """The proposals read the agents' inputs again to see which decisions still hold; they
    read them with the user's ``models:`` (config/agents.yaml), as the agents did. Read with
    the shipped declarations instead, a lead's input hashed otherwise and its decision
    proposed nothing."""
    shipped = yaml.safe_load(DEFAULT_PATH.read_text())
    # A shorter stale window changes the stale flag, so the inputs, of many open leads.
    shipped["models"]["lead"]["stale_after_days"] = 30
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(shipped))
    home = copy_crm("stages")
    materialize(
        STEPS["decided"] | dg.AssetSelection.keys(PROPOSED_ACTIONS),
        database=home.database,
        landing=home.landing.root,
        resources={"agents": AgentsConfigResource(path=str(path))},
    )
    with home.connect() as conn:
        decided = conn.execute(
            "SELECT count(DISTINCT entity_id) FROM agents.decisions "
            "WHERE agent = 'lead_qualification'"
        ).fetchone()[0]
        # Each decided lead's recommendation is one action (assign, follow up or nurture).
        proposed = conn.execute(
            "SELECT count(DISTINCT entity_id) FROM governance.actions "
            "WHERE source = 'lead_qualification'"
        ).fetchone()[0]
        stale_differs = conn.execute(
            "SELECT count(*) FROM agents.decisions WHERE agent = 'lead_qualification' "
            "AND (input->>'stale')::BOOLEAN "
            "AND date_diff('day', (input->>'created_at')::TIMESTAMPTZ, now()) < 365"
        ).fetchone()[0]
    assert stale_differs > 0  # the declarations change some inputs
    assert decided > 0
    assert proposed == decided


def test_the_agents_hashes_give_the_open_items_reading_the_inputs_gives(
    copy_crm, tmp_path, monkeypatch
):
    """A proposal takes the input hashes the agents recorded (``agents.item_hashes``) and
    reads again only the items touched since; the open items and actions are those a proposal
    that reads every input finds."""
    home = copy_crm("decided")  # the agents have run (and recorded their hashes), no proposal
    read_by_hand = tmp_path / "read.duckdb"
    shutil.copyfile(home.database, read_by_hand)
    with duckdb.connect(str(read_by_hand)) as conn:
        conn.execute("DELETE FROM agents.item_hashes")
        conn.execute("DELETE FROM agents.watermarks WHERE agent LIKE 'inputs/%'")

    reads: dict[str, int] = {}
    for agent, read in open_items.INPUTS.items():

        def counted(conn, ids=None, *, agent=agent, read=read, **options):
            items = read(conn, ids, **options)
            reads[agent] = reads.get(agent, 0) + len(items)
            return items

        monkeypatch.setitem(open_items.INPUTS, agent, counted)

    with home.connect() as conn:
        assert conn.execute("SELECT count(*) FROM agents.item_hashes").fetchone()[0] > 0
        taken = propose(conn, run_id="taken", anchor_path=None)
        taken_actions, taken_items = _actions(conn, "taken"), _open_items(conn)
    assert sum(reads.values()) < len(taken_items) / 10  # hardly any input read again
    reads.clear()
    with duckdb.connect(str(read_by_hand)) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        read = propose(conn, run_id="taken", anchor_path=None)
        read_actions, read_items = _actions(conn, "taken"), _open_items(conn)
    assert sum(reads.values()) == len(read_items)  # every open item read

    assert taken > 0
    assert (taken, taken_actions, taken_items) == (read, read_actions, read_items)
