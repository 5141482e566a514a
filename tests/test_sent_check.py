"""The check that nothing was sent without a verdict looks at what was sent since it last
passed, and keeps failing until a failure is put right; every sent action on request."""

import dagster as dg

from orch_assets.governance.checks import (
    SentCheckConfig,
    nothing_sent_without_a_verdict,
    sent_checkpoint_path,
)
from resources import GovernanceResource, StateStore
from revorch.governance.policy import DEFAULT_PATH


def _check(home, *, every: bool = False) -> dg.AssetCheckResult:
    return nothing_sent_without_a_verdict(
        config=SentCheckConfig(full_check=every),
        # The home's file, or on DuckLake (``state_backend``) this test's lake, as a run's.
        state_store=StateStore.configured(home.database),
        governance=GovernanceResource(
            policy_path=str(DEFAULT_PATH), audit_anchor_path=str(home.anchor)
        ),
    )


def _meta(result: dg.AssetCheckResult) -> dict:
    return {key: value.value for key, value in result.metadata.items()}


def test_the_check_looks_at_what_was_sent_since_it_last_passed(copy_crm):
    home = copy_crm("governed")
    checkpoint = sent_checkpoint_path(home.anchor)
    checkpoint.unlink(missing_ok=True)  # as before the first check

    first = _check(home)
    assert first.passed and _meta(first)["looked_at"] == "every sent action"
    assert _meta(first)["sent"] > 0 and checkpoint.exists()
    again = _check(home)
    assert again.passed and _meta(again)["looked_at"].startswith("sent after row ")

    # Something marks an action sent with no dispatch verdict (only the proposal's).
    # (Select, then update: DuckLake tables take no UPDATE ... RETURNING.)
    with home.connect() as conn:
        [(forged,)] = conn.execute(
            "SELECT min(action_id) FROM governance.actions WHERE status = 'pending_approval'"
        ).fetchall()
        assert forged is not None
        conn.execute(
            "UPDATE governance.actions SET status = 'sent', updated_at = now() WHERE action_id = ?",
            [forged],
        )
    for _ in range(2):  # the failure is not forgotten by the next check
        failed = _check(home)
        assert not failed.passed
        assert [row["action_id"] for row in _meta(failed)["sample"]] == [forged]

    # Put right; then a forgery dated before the last check passed is found by a full check.
    with home.connect() as conn:
        conn.execute(
            "UPDATE governance.actions SET status = 'pending_approval' WHERE action_id = ?",
            [forged],
        )
    assert _check(home).passed
    with home.connect() as conn:
        conn.execute(
            "UPDATE governance.actions SET status = 'sent', updated_at = TIMESTAMPTZ '2000-01-01' "
            "WHERE action_id = ?",
            [forged],
        )
    assert _check(home).passed  # nothing sent since the last check, as far as it can tell
    full = _check(home, every=True)
    assert not full.passed and _meta(full)["looked_at"] == "every sent action"
