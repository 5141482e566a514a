"""The `revorch` command, run as a user runs it, in a fresh directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from revorch.cli import main


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


@pytest.fixture(scope="module")
def quickstarted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``revorch quickstart --contacts 1000`` in a fresh folder for the module's tests,
    which copy the folder (``.revorch`` holds only relative paths) and change their copy."""
    folder = tmp_path_factory.mktemp("quickstart")
    return folder, _revorch("quickstart", "--contacts", "1000", cwd=folder)


def _quickstarted_copy(quickstarted, tmp_path: Path) -> Path:
    folder, done = quickstarted
    assert done.returncode == 0, done.stderr
    shutil.copytree(folder / ".revorch", tmp_path / ".revorch")
    return tmp_path


@pytest.mark.slow
def test_quickstart_fills_the_state_store_and_prints_the_funnel(quickstarted, tmp_path):
    folder, done = quickstarted
    assert done.returncode == 0, done.stderr
    database = folder / ".revorch" / "revorch.duckdb"
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
    assert (folder / ".revorch" / "dagster" / "dagster.yaml").exists()
    assert any((folder / ".revorch" / "dagster").rglob("*.db"))

    # Running it again lands the same seeded events: all duplicates, the same funnel.
    again = _revorch(
        "quickstart", "--contacts", "1000", cwd=_quickstarted_copy(quickstarted, tmp_path)
    )
    assert again.returncode == 0, again.stderr

    def funnel(run: subprocess.CompletedProcess, home: Path) -> list[str]:
        # The indented lines, with the home folder (the copy's differs) named alike.
        lines = run.stdout.replace(str(home), "HOME").splitlines()
        return [line for line in lines if line.startswith("  ")]

    assert funnel(done, folder) == funnel(again, tmp_path)


# `revorch import` then `revorch ingest` of a file: tests/test_run_summary.py, whose ingests
# load the same file.


def test_import_of_a_missing_file_is_a_clear_error(tmp_path):
    done = _revorch("import", "nope.ndjson", cwd=tmp_path)
    assert done.returncode == 2
    assert "no such file" in done.stderr


@pytest.mark.slow
def test_rebuild_recomputes_everything_and_keeps_the_same_state(quickstarted, tmp_path):
    _quickstarted_copy(quickstarted, tmp_path)
    database = tmp_path / ".revorch" / "revorch.duckdb"
    query = "SELECT * FROM stages.stage_transitions ORDER BY ALL"
    with duckdb.connect(str(database), read_only=True) as conn:
        before = conn.execute(query).fetchall()
    done = _revorch("rebuild", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute(query).fetchall() == before
        recomputed = conn.execute(
            "SELECT count(*) FROM state_watermarks WHERE name LIKE 'stages/%_lifecycle'"
        ).fetchone()[0]
    assert recomputed == 2
    assert len(before) > 1000


@pytest.mark.slow
def test_setting_an_llm_url_switches_the_agents_to_the_llm_tier(tmp_path):
    from fake_openai import FakeOpenAI

    # 300 contacts: fewer calls for the shipped limits (500 a minute) to pace than at 1,000.
    with FakeOpenAI() as server:
        env_run = subprocess.run(
            [sys.executable, "-m", "revorch.cli", "quickstart", "--contacts", "300"],
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


@pytest.mark.slow
def test_a_person_approves_and_rejects_from_the_command_line_and_dispatch_sends_once(
    quickstarted, tmp_path
):
    _quickstarted_copy(quickstarted, tmp_path)
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
    assert "Verifying" not in verified.stderr  # no bar in a pipe unless asked for
    shown = _revorch("audit", "verify", "--progress", cwd=tmp_path)
    assert shown.returncode == 0 and "Verifying" in shown.stderr and "100%" in shown.stderr
    with duckdb.connect(str(tmp_path / ".revorch" / "revorch.duckdb")) as conn:
        company = conn.execute(
            "SELECT company_id FROM governance.actions WHERE action_id = ?", [chosen]
        ).fetchone()[0]
        conn.execute("UPDATE governance.audit_log SET actor = 'human:mallory' WHERE seq = 3")
    tampered = _revorch("audit", "verify", cwd=tmp_path)
    assert tampered.returncode == 2 and "tampered" in tampered.stdout
    history = _revorch("history", company, cwd=tmp_path)
    assert history.returncode == 0 and "human:alice" in history.stdout


# --- mistakes: one line on stderr saying what is wrong and what to do, exit code 2 -------

CONFIG = Path(__file__).resolve().parent.parent / "config"


def _mistake(capsys, *argv: str) -> str:
    """Run `revorch argv` in this process; the one line it printed on stderr."""
    try:
        code = main(list(argv))
    except SystemExit as usage:  # argparse's own exit
        code = usage.code
    captured = capsys.readouterr()
    assert code == 2, captured
    line = captured.err.strip()
    assert line and "\n" not in line and "Traceback" not in line, captured.err
    return line


@pytest.mark.parametrize(
    "command", [["sql", "SELECT 1"], ["report", "funnel"], ["audit", "verify"]]
)
def test_reading_before_any_state_store_exists(in_empty_folder, capsys, command):
    line = _mistake(capsys, *command)
    assert "no state store at" in line
    if command[0] != "audit":
        assert "revorch quickstart" in line


def test_an_unwritable_home_names_the_path_and_revorch_home(in_empty_folder, capsys, monkeypatch):
    (in_empty_folder / "a_file").write_text("")
    monkeypatch.setenv("REVORCH_HOME", str(in_empty_folder / "a_file" / "home"))
    line = _mistake(capsys, "simulate", "--contacts", "10")
    assert "a_file" in line and "REVORCH_HOME" in line


def test_import_refuses_a_source_name_the_landing_zone_cannot_take(in_empty_folder, capsys):
    (in_empty_folder / "ok.ndjson").write_text('{"event_id":"e"}\n')
    line = _mistake(capsys, "import", "ok.ndjson", "--source", "Bad Name")
    assert "'Bad Name'" in line and "lower-case letters" in line
    assert not (in_empty_folder / ".revorch").exists()


def test_import_refuses_a_folder(in_empty_folder, capsys):
    (in_empty_folder / "exports").mkdir()
    assert "exports is a folder" in _mistake(capsys, "import", "exports")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"id,name\n1,Acme\n", "does not look like NDJSON (its first line starts 'id,name')"),
        (b'[{"event_id": "e-1"}]\n', "does not look like NDJSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file"),
    ],
)
def test_import_refuses_a_file_that_is_not_ndjson_unless_forced(
    in_empty_folder, capsys, content, expected
):
    (in_empty_folder / "export.csv").write_bytes(content)
    line = _mistake(capsys, "import", "export.csv")
    assert expected in line and "--force" in line
    assert not (in_empty_folder / ".revorch").exists()
    assert main(["import", "export.csv", "--force"]) == 0
    assert len(list((in_empty_folder / ".revorch" / "landing" / "incoming").iterdir())) == 1


@pytest.mark.parametrize(
    ("variable", "file", "breaks", "key"),
    [
        (
            "REVORCH_LIFECYCLE_CONFIG",
            "lifecycle.yaml",
            ("mql_threshold:", "mql_treshold:"),
            "engagement.mql_treshold",
        ),
        (
            "REVORCH_AGENTS_CONFIG",
            "agents.yaml",
            ("model: gpt-4o-mini", "model: [oops"),
            "not YAML at line",
        ),
        ("REVORCH_POLICY", "policy.yaml", ("sla_hours:", "sla_hourz:"), "sla_hourz"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [["ingest"], ["rebuild"], ["dispatch"], ["approvals", "approve", "a-1", "--by", "x"], ["ui"]],
)
def test_an_invalid_config_is_named_with_its_key_before_any_run_starts(
    in_empty_folder, capsys, monkeypatch, variable, file, breaks, key, command
):
    text = (CONFIG / file).read_text()
    assert breaks[0] in text
    broken = in_empty_folder / file
    broken.write_text(text.replace(breaks[0], breaks[1], 1))
    monkeypatch.setenv(variable, str(broken))
    line = _mistake(capsys, *command)
    assert str(broken) in line and key in line and "fix it" in line
    assert not (in_empty_folder / ".revorch" / "dagster").exists()  # no run was started


def test_a_mistake_has_no_traceback_unless_debug_is_asked_for(tmp_path):
    quiet = _revorch("import", "missing.ndjson", cwd=tmp_path)
    assert quiet.returncode == 2
    assert quiet.stderr == "revorch import: no such file: missing.ndjson\n"
    for argv in (["--debug", "import", "missing.ndjson"], ["import", "missing.ndjson", "--debug"]):
        loud = _revorch(*argv, cwd=tmp_path)
        assert "Traceback" in loud.stderr and "RevorchError: no such file" in loud.stderr
