"""Dagster beyond `dagster dev`: run and event storage on PostgreSQL (dagster-postgres), the
multiprocess executor, and the writer pool keeping its steps one at a time across processes."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from revorch.instance import POSTGRES_URL_VARIABLE, instance_config

# Each step appends (name, pid, start, end) here; the path comes from the run config.
_STEP_SECONDS = 1.0


class StepLog(dg.Config):
    path: str


def _record(name: str, config: StepLog) -> None:
    start = time.time()
    time.sleep(_STEP_SECONDS)
    line = {"step": name, "pid": os.getpid(), "start": start, "end": time.time()}
    with open(config.path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


@dg.op(pool="duckdb_writer")
def writer_a(config: StepLog) -> None:
    _record("writer_a", config)


@dg.op(pool="duckdb_writer")
def writer_b(config: StepLog) -> None:
    _record("writer_b", config)


@dg.op
def reader(config: StepLog) -> None:
    _record("reader", config)


@dg.job(executor_def=dg.multiprocess_executor.configured({"max_concurrent": 3}))
def three_steps():
    writer_a()
    writer_b()
    reader()


def make_three_steps() -> dg.JobDefinition:
    """How each step's process finds the job: this module, imported from tests/."""
    return three_steps


@pytest.mark.slow
def test_a_multiprocess_run_on_postgres_storage_keeps_the_writer_pool_single(
    postgres_database: str, tmp_path: Path, monkeypatch
):
    steps = tmp_path / "steps.jsonl"
    # The project's dagster.yaml as `revorch` writes it with PostgreSQL set: Dagster's own
    # storage there, not the SQLite event log it names otherwise (which would win).
    monkeypatch.setenv(POSTGRES_URL_VARIABLE, _url(postgres_database))
    overrides = yaml.safe_load(instance_config(tmp_path / "dagster"))
    assert "event_log_storage" not in overrides
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        config = {"path": str(steps)}
        result = dg.execute_job(
            dg.build_reconstructable_job(
                "test_ducklake_dagster",
                "make_three_steps",
                reconstructor_working_directory=str(Path(__file__).parent),
            ),
            instance=instance,
            run_config={
                "ops": {name: {"config": config} for name in ("writer_a", "writer_b", "reader")}
            },
        )
        assert result.success
        run_id = result.run_id
    lines = [json.loads(line) for line in steps.read_text().splitlines()]
    by_step = {line["step"]: line for line in lines}
    assert set(by_step) == {"writer_a", "writer_b", "reader"}
    # Each step ran in its own process, none in this one.
    pids = {line["pid"] for line in lines}
    assert len(pids) == 3 and os.getpid() not in pids
    # The two writers never overlapped (pool limit 1), though three processes were allowed.
    a, b = by_step["writer_a"], by_step["writer_b"]
    assert a["end"] <= b["start"] or b["end"] <= a["start"]
    # The run and its events are in PostgreSQL, readable by any webserver or daemon.
    with psycopg2.connect(postgres_database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", [run_id])
        assert cursor.fetchone() == ("SUCCESS",)
        cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", [run_id])
        assert cursor.fetchone()[0] > 10


def _url(dsn: str) -> str:
    parts = dict(part.split("=", 1) for part in dsn.split())
    return (
        f"postgresql+psycopg2://{parts['user']}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    )
