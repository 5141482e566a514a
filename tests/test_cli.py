"""The `revorch` command, run as a user runs it, in a fresh directory."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb


def _revorch(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    return subprocess.run(
        [sys.executable, "-m", "revorch.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_quickstart_fills_the_state_store_and_prints_the_funnel(tmp_path):
    done = _revorch("quickstart", "--contacts", "1000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    database = tmp_path / ".revorch" / "revorch.duckdb"
    assert "Funnel" in done.stdout
    assert str(database) in done.stdout
    assert "revorch ui" in done.stdout
    with duckdb.connect(str(database), read_only=True) as conn:
        for table in ("owners", "companies", "contacts", "deals", "activities", "tickets"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0, table
        received, loaded = conn.execute(
            "SELECT sum(received), sum(loaded) FROM landing_batches"
        ).fetchone()
    assert received == loaded > 0
    # The run is in the project's Dagster instance, so the UI shows it.
    assert (tmp_path / ".revorch" / "dagster" / "dagster.yaml").exists()
    assert any((tmp_path / ".revorch" / "dagster").rglob("*.db"))

    # Running it again lands the same seeded events: all duplicates, the same funnel.
    again = _revorch("quickstart", "--contacts", "1000", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    funnel = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    assert funnel == [line for line in again.stdout.splitlines() if line.startswith("  ")]


def test_import_lands_a_file_and_ingest_loads_it(tmp_path):
    source = tmp_path / "changes.ndjson"
    source.write_text(
        '{"event_id":"imp-1","object_type":"company","object_id":"co-1",'
        '"occurred_at":"2026-01-01T00:00:00Z","properties":{"name":"Acme"}}\n'
        "not json\n"
    )
    assert _revorch("import", str(source), "--source", "import", cwd=tmp_path).returncode == 0
    done = _revorch("ingest", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "2 lines received = 1 loaded + 0 duplicates + 1 quarantined" in done.stdout


def test_import_of_a_missing_file_is_a_clear_error(tmp_path):
    done = _revorch("import", "nope.ndjson", cwd=tmp_path)
    assert done.returncode == 2
    assert "no such file" in done.stderr


def test_rebuild_recomputes_everything_and_keeps_the_same_state(tmp_path):
    assert _revorch("quickstart", "--contacts", "1000", cwd=tmp_path).returncode == 0
    database = tmp_path / ".revorch" / "revorch.duckdb"
    query = "SELECT * FROM stages.stage_transitions ORDER BY ALL"
    with duckdb.connect(str(database), read_only=True) as conn:
        before = conn.execute(query).fetchall()
    done = _revorch("rebuild", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute(query).fetchall() == before
        recomputed = conn.execute(
            "SELECT count(*) FROM state_watermarks WHERE name LIKE 'stages/%'"
        ).fetchone()[0]
    assert recomputed == 2
    assert len(before) > 1000


def test_setting_an_llm_url_switches_the_agents_to_the_llm_tier(tmp_path):
    from fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        env_run = subprocess.run(
            [sys.executable, "-m", "revorch.cli", "quickstart", "--contacts", "1000"],
            cwd=tmp_path,
            env={
                **{
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("REVORCH_", "DAGSTER_"))
                },
                "REVORCH_LLM_BASE_URL": server.base_url,
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert env_run.returncode == 0, env_run.stderr
        calls = server.total_requests
    assert calls > 0
    database = tmp_path / ".revorch" / "revorch.duckdb"
    with duckdb.connect(str(database), read_only=True) as conn:
        llm_decisions = conn.execute(
            "SELECT count(*) FROM agents.decisions WHERE tier = 'llm'"
        ).fetchone()[0]
        ledger_calls = conn.execute("SELECT sum(calls) FROM agents.cost_ledger").fetchone()[0]
    assert llm_decisions > 0 and ledger_calls == calls


def test_a_person_approves_and_rejects_from_the_command_line_and_dispatch_sends_once(tmp_path):
    assert _revorch("quickstart", "--contacts", "1000", cwd=tmp_path).returncode == 0
    listed = _revorch("approvals", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    waiting = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert len(waiting) >= 2, listed.stdout
    chosen, refused = waiting[0], waiting[1]

    approved = _revorch("approvals", "approve", chosen, "--by", "alice", cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    no_reason = _revorch("approvals", "reject", refused, "--by", "bob", cwd=tmp_path)
    assert no_reason.returncode == 2 and "needs a comment" in no_reason.stderr
    rejected = _revorch(
        "approvals", "reject", refused, "--by", "bob", "--comment", "not now", cwd=tmp_path
    )
    assert rejected.returncode == 0, rejected.stderr
    twice = _revorch("approvals", "approve", refused, "--by", "alice", cwd=tmp_path)
    assert twice.returncode == 1 and "is rejected" in twice.stderr

    for _ in range(2):
        sent = _revorch("dispatch", cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
    outbox = (tmp_path / ".revorch" / "outbox" / "actions.jsonl").read_text()
    assert outbox.count(chosen) == 1 and refused not in outbox

    verified = _revorch("audit", "verify", cwd=tmp_path)
    assert verified.returncode == 0 and "intact" in verified.stdout
    with duckdb.connect(str(tmp_path / ".revorch" / "revorch.duckdb")) as conn:
        company = conn.execute(
            "SELECT company_id FROM governance.actions WHERE action_id = ?", [chosen]
        ).fetchone()[0]
        conn.execute("UPDATE governance.audit_log SET actor = 'human:mallory' WHERE seq = 3")
    tampered = _revorch("audit", "verify", cwd=tmp_path)
    assert tampered.returncode == 2 and "tampered" in tampered.stdout
    history = _revorch("history", company, cwd=tmp_path)
    assert history.returncode == 0 and "human:alice" in history.stdout
