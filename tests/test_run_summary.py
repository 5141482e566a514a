"""Every run of the main job from the CLI ends with what it did, and what to do if it failed."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_an_ingest_ends_with_its_summary_and_a_failed_step_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    env.pop("OPENAI_API_KEY", None)

    def revorch(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "revorch.cli", *args],
            cwd=tmp_path,
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=600,
        )

    source = tmp_path / "changes.ndjson"
    source.write_text(
        '{"event_id":"imp-1","object_type":"company","object_id":"co-1",'
        '"occurred_at":"2026-01-01T00:00:00Z","properties":{"name":"Acme"}}\n'
        "not json\n"
    )
    # `revorch import` lands the file, and the ingests below load it (test_cli's import test,
    # folded in here: one main-job run fewer in the suite).
    assert revorch("import", str(source), "--source", "import").returncode == 0
    # The dispatcher's journal cannot be created under a file: its step fails.
    (tmp_path / "a-file").write_text("")
    failed = revorch("ingest", REVORCH_DISPATCH_JOURNAL=str(tmp_path / "a-file" / "j.sqlite3"))
    assert failed.returncode == 1
    summary = failed.stdout[failed.stdout.index("This run (") :].splitlines()
    assert summary[1].startswith("- Config:   agents.yaml ")  # each file with its hash
    assert "lifecycle.yaml" in summary[1] and "policy.yaml" in summary[1]
    summary.pop(1)
    assert summary[1] == (
        '- Ingested: 1 batches, 1 changes loaded, 0 duplicates, 1 quarantined (revorch sql "SELECT'
        ' * FROM quarantine")'
    )
    assert summary[2].startswith("- Decided:  nothing new to decide; LLM tier offline")
    assert summary[3].startswith("- Proposed: 0 actions")
    assert (
        "- FAILED:   step governance__dispatched_actions: FileExistsError: [Errno 17] "
        f"File exists: '{tmp_path / 'a-file'}'" in summary
    )
    assert summary[-1].startswith("- To see the failed step's log: revorch ui, then Runs > ")
    assert "FileExistsError" in failed.stderr.splitlines()[-1]  # the one-line reason

    again = revorch("ingest")
    assert again.returncode == 0, again.stderr
    assert "2 lines received = 1 loaded + 0 duplicates + 1 quarantined" in again.stdout
    summary = again.stdout[again.stdout.index("This run (") :].splitlines()
    assert summary[2].startswith("- Ingested: 0 batches, 0 changes loaded")
    assert summary[-1].startswith("- Sent:     to outbox")
    assert not any("FAILED" in line for line in summary)


def test_the_summary_says_when_the_llm_tier_broke_mid_run():
    from revorch.reports.run_summary import RunOutcome, run_summary

    tier = "off after 5 consecutive failures (server_error: HTTP 503: overloaded)"
    text = run_summary(
        RunOutcome(
            "r1",
            {
                "agents/deal_risk": {"decisions_offline": 3, "decisions_llm": 2, "llm_tier": "llm"},
                "agents/lead_qualification": {"decisions_offline": 9, "llm_tier": tier},
            },
        )
    )
    assert f"- LLM:      switched {tier}; the rest of the run decided offline at once." in text
    healthy = run_summary(
        RunOutcome("r2", {"agents/deal_risk": {"decisions_offline": 3, "llm_tier": "llm"}})
    )
    assert "- LLM:" not in healthy
