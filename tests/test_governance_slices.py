"""The governance steps work through a large backlog in slices (issue 16: one Python row per
action held at once cost gigabytes at a million contacts). Sliced with tiny slices, they
propose, judge and send exactly what they do in one piece: no row dropped, none doubled."""

import json
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path

import duckdb
import pytest

from conftest import CrmHome, StateCopy
from revorch.governance import actions, open_items, verdicts
from revorch.governance.actions import propose
from revorch.governance.audit import verify
from revorch.governance.dispatch import dispatch
from revorch.governance.policy import load_policy
from revorch.governance.targets import OutboxFile
from revorch.governance.verdicts import judge_proposed

POLICY = load_policy()
ACTION_COLUMNS = (
    "action_id, action_type, source, decision_id, entity_type, entity_id, company_id, reason, "
    "CAST(payload AS VARCHAR), CAST(facts AS VARCHAR), status, verdict, "
    "CAST(verdict_rules AS VARCHAR), attempts, target, resolution"
)


@pytest.fixture
def source(copy_crm) -> Path:
    """The shared CRM's state once its agents have decided, in this test's state store."""
    return copy_crm("decided").database


@contextmanager
def copied(
    state_copy: StateCopy, source: Path, folder: Path
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a copy of the state ``source`` in the new ``folder`` (on DuckLake, a
    lake of its own: two copies are governed side by side and compared)."""
    with (
        state_copy(source, folder / "revorch.duckdb"),
        closing(CrmHome(folder).connect()) as conn,
    ):
        yield conn


def dies_in_the_fourth_slice(work):
    """``work``, called once per action, except that its call for the first action of the
    fourth slice of 97 kills the process."""
    calls = []

    def dying(*args):
        calls.append(args)
        if len(calls) > 3 * 97:
            raise RuntimeError("the process died")
        return work(*args)

    return dying


def governed(
    state_copy: StateCopy,
    source: Path,
    folder: Path,
    *,
    slice_rows: int | None,
    per_transaction: int | None = None,
) -> dict:
    """Propose, judge and dispatch on a copy of ``source``; what it ended with."""
    with copied(state_copy, source, folder) as conn:
        return _governed(conn, folder, slice_rows=slice_rows, per_transaction=per_transaction)


def _governed(
    conn: duckdb.DuckDBPyConnection,
    folder: Path,
    *,
    slice_rows: int | None,
    per_transaction: int | None,
) -> dict:
    anchor, outbox = folder / "anchors.jsonl", folder / "outbox.jsonl"
    sliced = {} if slice_rows is None else {"slice_rows": slice_rows}
    committed = {} if per_transaction is None else {"slices_per_transaction": per_transaction}
    proposed = propose(conn, run_id="run-1", anchor_path=anchor, **sliced, **committed)
    judged = judge_proposed(conn, POLICY, run_id="run-1", anchor_path=anchor, **sliced, **committed)
    report = dispatch(
        lambda: nullcontext(conn),
        POLICY,
        OutboxFile(outbox, batch_size=3),
        journal_path=folder / "journal.sqlite3",
        run_id="run-1",
        anchor_path=anchor,
        **sliced,
    )
    sent = [json.loads(line)["action_id"] for line in outbox.read_text().splitlines()]
    trail = verify(conn, anchor)
    found = {
        "proposed": proposed,
        "verdicts": dict(judged),
        "outcomes": dict(report.outcomes),
        "actions": conn.execute(
            f"SELECT {ACTION_COLUMNS} FROM governance.actions ORDER BY ALL"
        ).fetchall(),
        "open_items": conn.execute("SELECT * FROM governance.open_items ORDER BY ALL").fetchall(),
        "holdouts": conn.execute(
            "SELECT playbook, entity_type, entity_id, arm, first_action_id "
            "FROM governance.holdout_assignments ORDER BY ALL"
        ).fetchall(),
        # The same events in the same order (the dispatch events of a slice come before the
        # next slice's verdicts: compared apart, with their times left out).
        "trail": conn.execute(
            "SELECT event, actor, action_id, decision_id, entity_id, "
            "CAST(detail AS VARCHAR) FROM governance.audit_log "
            "WHERE event NOT IN ('dispatched', 'dispatch_failed') ORDER BY seq"
        ).fetchall(),
        "dispatched": conn.execute(
            "SELECT event, action_id, detail->>'attempt', detail->>'outcome' "
            "FROM governance.audit_log WHERE event IN ('dispatched', 'dispatch_failed') "
            "ORDER BY ALL"
        ).fetchall(),
        "sent": sorted(sent),
        "intact": trail.intact,
        "problems": trail.problems,
    }
    return found


def test_sliced_governance_proposes_judges_and_sends_what_one_piece_does(
    source, state_copy, tmp_path, monkeypatch
):
    whole = governed(state_copy, source, tmp_path / "whole", slice_rows=None)
    # Slices of 97 actions and 400 contacts: several slices each, with boundaries everywhere.
    monkeypatch.setattr(open_items, "SLICE_IDS", 400)
    # The proposals and verdicts commit every two slices: the same actions, trail and marks as
    # one piece.
    sliced = governed(state_copy, source, tmp_path / "sliced", slice_rows=97, per_transaction=2)
    assert whole["proposed"] > 5 * 97, "too few actions to cross several slices"
    assert len(whole["open_items"]) > 2 * 400, "too few open leads to cross slices"
    assert whole["proposed"] < actions.SLICE_ROWS, "the whole run must be one slice"
    assert len({row[0] for row in whole["actions"]}) == whole["proposed"]
    assert whole["sent"] and len(set(whole["sent"])) == len(whole["sent"])
    for key in whole:
        assert sliced[key] == whole[key], key
    assert sliced["intact"] and not sliced["problems"]


def test_proposals_that_die_after_a_commit_are_finished_by_the_next_run(
    source, state_copy, tmp_path, monkeypatch
):
    """Committed two slices at a time, a proposal run that dies in its fourth slice has kept
    the first two slices' actions but not the proposals' watermarks: the next run proposes
    the rest, and the actions and the chain are those of one uninterrupted run."""
    whole = governed(state_copy, source, tmp_path / "whole", slice_rows=None)
    folder = tmp_path / "died"
    with copied(state_copy, source, folder) as conn:
        anchor = folder / "anchors.jsonl"
        action_row = actions._action_row
        monkeypatch.setattr(actions, "_action_row", dies_in_the_fourth_slice(action_row))
        with pytest.raises(RuntimeError, match="died"):
            propose(
                conn, run_id="run-1", anchor_path=anchor, slice_rows=97, slices_per_transaction=2
            )
        kept = conn.execute("SELECT count(*) FROM governance.actions").fetchone()[0]
        assert kept == 2 * 97, "the first transaction's two slices are committed, no more"
        marks = conn.execute(
            "SELECT count(*) FROM agents.watermarks WHERE starts_with(agent, 'proposals/')"
        ).fetchone()[0]
        assert marks == 0, "no proposal watermark may claim the rest was proposed"
        monkeypatch.setattr(actions, "_action_row", action_row)
        rest = propose(conn, run_id="run-2", anchor_path=anchor, slice_rows=97)
        assert kept + rest == whole["proposed"]
        found = conn.execute(f"SELECT {ACTION_COLUMNS} FROM governance.actions ORDER BY ALL")
        # Judged and sent in the whole run: compare what a proposal decides.
        columns = slice(0, 10)
        assert [row[columns] for row in found.fetchall()] == [
            row[columns] for row in whole["actions"]
        ]
        assert (
            conn.execute(
                "SELECT count(*) FROM agents.watermarks WHERE starts_with(agent, 'proposals/')"
            ).fetchone()[0]
            > 0
        )
        trail = verify(conn, anchor)
        assert trail.intact and not trail.problems


def test_verdicts_that_die_after_a_commit_are_finished_by_the_next_run(
    source, state_copy, tmp_path, monkeypatch
):
    """Committed two slices at a time, a verdict run that dies in its fourth slice has kept
    the first two slices' verdicts: the next run judges the rest (an action judged is no
    longer ``proposed``), and the actions and the chain are those of one uninterrupted run."""
    with copied(state_copy, source, tmp_path / "whole") as one_piece:
        propose(one_piece, run_id="run-1", anchor_path=tmp_path / "whole" / "anchors.jsonl")
        judge_proposed(
            one_piece, POLICY, run_id="run-1", anchor_path=tmp_path / "whole" / "anchors.jsonl"
        )
        whole = one_piece.execute(
            f"SELECT {ACTION_COLUMNS} FROM governance.actions ORDER BY ALL"
        ).fetchall()
    folder = tmp_path / "died"
    with copied(state_copy, source, folder) as conn:
        anchor = folder / "anchors.jsonl"
        proposed = propose(conn, run_id="run-1", anchor_path=anchor)
        assert proposed > 4 * 97, "too few actions to cross four slices"
        judge = verdicts.judge
        monkeypatch.setattr(verdicts, "judge", dies_in_the_fourth_slice(judge))
        with pytest.raises(RuntimeError, match="died"):
            judge_proposed(
                conn,
                POLICY,
                run_id="run-1",
                anchor_path=anchor,
                slice_rows=97,
                slices_per_transaction=2,
            )
        left = conn.execute(
            "SELECT count(*) FROM governance.actions WHERE status = 'proposed'"
        ).fetchone()[0]
        assert left == proposed - 2 * 97, (
            "the first transaction's two slices are committed, no more"
        )
        monkeypatch.setattr(verdicts, "judge", judge)
        rest = judge_proposed(conn, POLICY, run_id="run-2", anchor_path=anchor, slice_rows=97)
        assert sum(rest.values()) == left
        found = conn.execute(f"SELECT {ACTION_COLUMNS} FROM governance.actions ORDER BY ALL")
        assert found.fetchall() == whole
        trail = verify(conn, anchor)
        assert trail.intact and not trail.problems
