from __future__ import annotations

import os
import pickle
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
import duckdb
import psycopg2
import psycopg2.errors
import pytest
from filelock import FileLock

# Imported first here, so the definitions (and the resources they default to) are built with
# the environment the suite starts with, never with a test's broken config path (test_cli).
import revorch.definitions  # noqa: F401
from resources.state_store import CONNECTION_CONFIG
from revorch import clock, settings
from revorch.governance.audit import DIGEST_SQL, chain_hash
from revorch.landing import LandingZone
from revorch.simulator import SimulationConfig, simulate_history
from revorch.state import access
from revorch.state.backend import OFFLINE_CONFIG, attach_lake, lake_connection
from revorch.state.migrate import migrate
from revorch.state.move import attached, copy_state

# The state backend the suite's stores use: `pytest --state-backend ducklake` (or this variable)
# puts every store a test builds from the environment on a fresh DuckLake (see `state_backend`).
STATE_BACKEND_VARIABLE = "REVORCH_TEST_STATE_BACKEND"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--state-backend",
        choices=["duckdb", "ducklake"],
        default=os.environ.get(STATE_BACKEND_VARIABLE) or "duckdb",
        help="the state backend of the stores tests build (default: the embedded file, or "
        f"{STATE_BACKEND_VARIABLE}); tests marked file_only skip on ducklake",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests first. pytest-xdist hands each worker one module at a time in
    this order, so the longest start early instead of running alone at the end of the run.
    On DuckLake, tests marked ``file_only`` skip with their reason."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
    if config.getoption("--state-backend") == "ducklake":
        for item in items:
            if marker := item.get_closest_marker("file_only"):
                item.add_marker(pytest.mark.skip(reason=f"file only: {marker.args[0]}"))


@pytest.fixture(autouse=True)
def state_backend(request: pytest.FixtureRequest) -> str:
    """The backend this run's stores use. On ``ducklake`` each test gets a fresh DuckLake (a
    migrated one, ``migrated_lake``: files under ``tmp_path``) through the environment, so the
    ``conn`` fixture, ``materialize(database=...)``, ``default_resources()`` and ``revorch``
    subprocesses all use it; a test that clears the REVORCH_ variables runs on the file."""
    backend = request.config.getoption("--state-backend")
    if backend == "ducklake" and not request.node.get_closest_marker("file_only"):
        env = request.getfixturevalue("monkeypatch")
        env.setenv("REVORCH_STATE_BACKEND", "ducklake")
        lake = request.getfixturevalue("migrated_lake")
        env.setenv("REVORCH_DUCKLAKE_CATALOG", lake.catalog)
        env.setenv("REVORCH_DUCKLAKE_DATA", str(lake.data))
    return backend


@pytest.fixture
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's ``tmp_path`` as the working folder, with no Revorch or Dagster variables."""
    for name in list(os.environ):
        if name.startswith(("REVORCH_", "DAGSTER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def zone(tmp_path: Path) -> LandingZone:
    return LandingZone(tmp_path / "landing").ensure()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "revorch.duckdb"


# Opened as the StateStore opens it, so a test may keep it open while the asset graph runs.
STATE_STORE_CONNECTION = CONNECTION_CONFIG


@pytest.fixture
def conn(db_path: Path, state_backend: str):
    """A migrated state store in a real DuckDB file, on the data clock: tests write histories
    with fixed dates, so "now" is their newest change, whatever day the suite runs. It may
    stay open while the graph runs on ``db_path`` (``revorch.definitions.materialize``).
    With ``--state-backend ducklake``, a connection to this test's DuckLake instead."""
    if state_backend == "ducklake":
        from resources.state_store import StateStore

        store = StateStore(
            database=str(db_path),
            clock=clock.DATA,
            backend="ducklake",
            catalog_dsn=settings.ducklake_catalog_dsn(),
            data_path=settings.ducklake_data_path(),
        )
        with store.get_connection() as connection:
            yield connection
        return
    connection = duckdb.connect(str(db_path), config=STATE_STORE_CONNECTION)
    connection.execute("SET TimeZone = 'UTC'")
    migrate(connection)
    clock.bind(connection, clock.DATA)
    yield connection
    connection.close()


def read_state(database: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the state a test's runs wrote: the file ``database``, or on
    DuckLake (``state_backend``) this test's lake, where those runs wrote instead."""
    if access.is_lake():
        connection = lake_connection(
            settings.ducklake_catalog_dsn(), settings.ducklake_data_path(), {}, read_only=True
        )
    else:
        connection = duckdb.connect(str(database), read_only=True)
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def ingest_and_stage(
    database: Path,
    zone: LandingZone,
    *,
    clock_setting: str = clock.WALL,
    selection: dg.AssetSelection | None = None,
) -> dict[str, dict[str, object]]:
    """Take what waits in ``zone`` through the real asset graph up to the handoffs (or
    ``selection``) on ``database``, as a run would (``revorch.definitions.materialize``);
    return each asset's materialization metadata by key (``"crm/change_log"``)."""
    from revorch.definitions import THROUGH_HANDOFFS, materialize

    result = materialize(
        selection or THROUGH_HANDOFFS, database=database, landing=zone.root, clock=clock_setting
    )
    return {
        "/".join(e.asset_key.path): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


class CountingConnection:
    """A DuckDB connection that counts the statements whose text holds ``needle``."""

    def __init__(self, conn, needle: str):
        self.conn, self.needle, self.count = conn, needle, 0

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def execute(self, sql, *args):
        self.count += self.needle in sql
        return self.conn.execute(sql, *args)


def event(event_id: str, object_type: str, object_id: str, occurred_at: str, **properties):
    return {
        "event_id": event_id,
        "object_type": object_type,
        "object_id": object_id,
        "occurred_at": occurred_at,
        "properties": properties,
    }


# -- one simulated CRM, built through the real asset graph once per test run ---------------------

# Small, but every stage, handoff, agent and governance table has rows.
SHARED_CRM = SimulationConfig(contacts=1_500, seed=5)

# The graph is materialized in three steps, and the home is kept after each, so a test can
# start where it needs to: before the agents have decided, or before governance has run.
_LATER = dg.AssetSelection.key_prefixes(["agents"], ["governance"], ["analytics"])
STEPS: dict[str, dg.AssetSelection] = {
    "stages": dg.AssetSelection.all() - _LATER,  # ingestion, stages, handoffs, metrics, report
    # offline models, every agent (not the daily model backtest, which decides nothing)
    "decided": dg.AssetSelection.key_prefixes(["agents"])
    - dg.AssetSelection.keys(["agents", "model_backtest"]),
    "governed": _LATER - dg.AssetSelection.key_prefixes(["agents"]),  # actions ... published
}


@dataclass(frozen=True)
class CrmHome:
    """A folder laid out like ``REVORCH_HOME``: the state store, its landing zone (batches in
    ``archive/``), the outbox and the audit anchors (the last two once governance has run)."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "revorch.duckdb"

    @property
    def landing(self) -> LandingZone:
        return LandingZone(self.root / "landing").ensure()

    @property
    def outbox(self) -> Path:
        return self.root / "outbox" / "actions.jsonl"

    @property
    def anchor(self) -> Path:
        return self.root / "audit" / "revorch.anchors.jsonl"

    def env(self) -> dict[str, str]:
        """Environment for a ``revorch`` subprocess or ``default_resources()`` on this home."""
        return {"REVORCH_HOME": str(self.root)}

    def connect(self) -> duckdb.DuckDBPyConnection:
        """Read-write, and may stay open while the asset graph runs on this home. On
        DuckLake (``state_backend``), a connection to this test's lake, where ``copy`` put
        the home's state."""
        if access.is_lake():
            connection = lake_connection(
                settings.ducklake_catalog_dsn(), settings.ducklake_data_path(), CONNECTION_CONFIG
            )
            connection.execute("SET TimeZone = 'UTC'")
            return connection
        connection = duckdb.connect(str(self.database), config=STATE_STORE_CONNECTION)
        connection.execute("SET TimeZone = 'UTC'")
        return connection


@dataclass(frozen=True)
class SimulatedCrm:
    """A simulated CRM after each of its build steps, read-only: copy it (``copy_crm``).

    ``metadata`` maps each asset (``"stages/mqls"``) to its materialization metadata and
    ``checks`` each asset check's name to its evaluation, over all the steps.
    """

    config: SimulationConfig
    homes: dict[str, CrmHome]
    metadata: dict[str, dict[str, dg.MetadataValue]]
    checks: dict[str, dg.AssetCheckEvaluation]

    def copy(self, step: str, destination: Path, *, into_lake: bool = True) -> CrmHome:
        """A copy of the home after ``step`` at ``destination`` (which must not exist); on
        DuckLake (``state_backend``) its state also goes into this test's lake, unless not
        ``into_lake``."""
        if step not in self.homes:
            raise ValueError(f"unknown step {step!r}; one of {sorted(self.homes)}")
        shutil.copytree(self.homes[step].root, destination)
        home = CrmHome(destination)
        if into_lake:  # this test's lake: the step's state goes in
            into_this_lake(home.database)
        return home


def build_crm(
    config: SimulationConfig,
    base: Path,
    steps: dict[str, dg.AssetSelection],
    *,
    clock_setting: str = clock.WALL,
) -> SimulatedCrm:
    """Simulate ``config`` into a landing zone and take it through ``steps`` of the real
    definitions' assets and checks (``revorch.definitions.materialize``), with the shipped
    configuration and the resources ``default_resources()`` picks for a ``REVORCH_HOME``; keep
    the home after each step under ``base``."""
    from resources import default_resources
    from revorch.definitions import materialize

    work = CrmHome(base / "work")
    simulate_history(work.landing, config)
    homes: dict[str, CrmHome] = {}
    metadata: dict[str, dict[str, dg.MetadataValue]] = {}
    checks: dict[str, dg.AssetCheckEvaluation] = {}
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        for name in settings.ELSEWHERE:  # the build stays in its folder, on the file
            env.delenv(name, raising=False)
        env.setenv("REVORCH_HOME", str(work.root))
        env.setenv("REVORCH_CLOCK", clock_setting)
        for step, selection in steps.items():
            result = materialize(selection, resources=default_resources(), instance=instance)
            assert result.success, f"the simulated CRM's {step} step failed"
            for materialization in result.get_asset_materialization_events():
                key = "/".join(materialization.asset_key.path)
                metadata[key] = dict(materialization.materialization.metadata)
            checks |= {e.check_name: e for e in result.get_asset_check_evaluations()}
            homes[step] = CrmHome(base / step)
            shutil.copytree(work.root, homes[step].root)
    return SimulatedCrm(config, homes, metadata, checks)


def _built_once(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], SimulatedCrm]
) -> SimulatedCrm:
    """``build`` once per test run, also when pytest-xdist runs the tests in several worker
    processes: the first worker to ask builds it under a lock in the run's shared temporary
    folder, the others wait for it and load what it left (the homes are read-only copies)."""
    run_root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_root = run_root.parent  # each worker's basetemp is a folder of the run's
    base = run_root / f"shared-{name}"
    built = base / "crm.pickle"
    with FileLock(str(run_root / f"shared-{name}.lock")):
        if built.is_file():
            return pickle.loads(built.read_bytes())
        crm = build(base)
        built.write_bytes(pickle.dumps(crm))
        return crm


@pytest.fixture(scope="session")
def simulated_crm(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCrm:
    """:data:`SHARED_CRM` through every asset and check of the definitions, in
    :data:`STEPS`. Built once per test run."""
    return _built_once(
        tmp_path_factory, "simulated_crm", lambda base: build_crm(SHARED_CRM, base, STEPS)
    )


# Larger, so that the offline models and their backtest have enough history to learn from; a
# pinned window on its own clock, as the backtests split it at fixed dates (and
# tests/test_offline.py builds the same history again to compare).
SCORING_CRM = SimulationConfig(contacts=4_000, seed=42, start="2025-01-01", end="2026-11-01")


@pytest.fixture(scope="session")
def scoring_crm(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCrm:
    """:data:`SCORING_CRM` through its stages (the ``"stages"`` step), built once per run.
    Without the checks, which ``simulated_crm`` runs: they would double its build time."""
    stages = {"stages": STEPS["stages"].without_checks()}
    return _built_once(
        tmp_path_factory,
        "scoring_crm",
        lambda base: build_crm(SCORING_CRM, base, stages, clock_setting=clock.DATA),
    )


@pytest.fixture
def copy_crm(
    simulated_crm: SimulatedCrm, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., CrmHome]:
    """Copies the shared CRM as it was after a step (``"stages"``, ``"decided"`` or
    ``"governed"``, the default) into this test's ``tmp_path`` and returns the copy, which the
    test may change freely: ``home = copy_crm("decided"); conn = home.connect()``. On DuckLake
    (``state_backend``) its state goes into this test's lake: the lake becomes a clone of the
    step's template (``lake_templates``) while nobody is connected to it, else the state is
    copied in (``copy_into_lake``)."""

    def copy(step: str = "governed") -> CrmHome:
        home = simulated_crm.copy(step, tmp_path / f"crm-{step}", into_lake=False)
        if access.is_lake():
            lake = request.getfixturevalue("migrated_lake")
            assert settings.ducklake_catalog_dsn() == lake.catalog, "not this test's lake"
            templates: LakeTemplates = request.getfixturevalue("lake_templates")
            if not templates.crm(simulated_crm, step).restore(lake):
                into_this_lake(home.database)
        return home

    return copy


def forge_approval(conn: duckdb.DuckDBPyConnection, action_id: str) -> int:
    """Append an approval by mallory with a consistent chain and no anchor; its seq."""
    seq, head = conn.execute(
        "SELECT seq, hash FROM governance.audit_log ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    conn.execute(
        "INSERT INTO governance.audit_log (seq, recorded_at, event, actor, action_id, detail, "
        "prev_hash, hash) VALUES (?, now(), 'approved', 'human:mallory', ?, '{}', ?, '')",
        [seq + 1, action_id, head],
    )
    digest = conn.execute(
        f"SELECT {DIGEST_SQL} FROM governance.audit_log WHERE seq = ?", [seq + 1]
    ).fetchone()[0]
    conn.execute(
        "UPDATE governance.audit_log SET hash = ? WHERE seq = ?",
        [chain_hash(head, digest), seq + 1],
    )
    return seq + 1


@contextmanager
def serving_app(app) -> Iterator[str]:
    """``app`` under a real uvicorn on 127.0.0.1, a port the system picks, in a thread; yields
    its base URL. It waits for the server to start (pytest-timeout is the hang guard), and
    fails at once if the server's thread died."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# -- PostgreSQL, for the DuckLake state backend and Dagster's PostgreSQL storage ----------------

POSTGRES_VARIABLE = "REVORCH_TEST_POSTGRES_DSN"  # exported by .ci/run


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A libpq string for a PostgreSQL server the tests may create databases on: the one
    .ci/run started (``REVORCH_TEST_POSTGRES_DSN``), or one started here from Debian's
    packages with .ci/postgres and stopped after the run. Skips if neither is possible."""
    import subprocess
    import tempfile

    if os.environ.get(POSTGRES_VARIABLE):
        yield os.environ[POSTGRES_VARIABLE]
        return
    script = Path(__file__).resolve().parents[1] / ".ci" / "postgres"
    # Under /tmp, reachable by the `postgres` user that runs the server when we are root.
    folder = Path(tempfile.mkdtemp(prefix="revorch-pg-"))
    folder.chmod(0o711)
    started = subprocess.run(
        [str(script), "start", str(folder / "server")], capture_output=True, text=True
    )
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {started.stderr.strip()[-300:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(script), "stop", str(folder / "server")], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_dsn: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped after it); its libpq string."""
    name = _create_database(postgres_dsn)
    try:
        yield _with_dbname(postgres_dsn, name)
    finally:
        _drop_database(postgres_dsn, name)


def _with_dbname(dsn: str, name: str) -> str:
    parts = [p for p in dsn.split() if not p.startswith("dbname=")]
    return " ".join([*parts, f"dbname={name}"])


@dataclass(frozen=True)
class Lake:
    """A DuckLake: its catalog (a PostgreSQL database's libpq string) and its data folder."""

    catalog: str
    data: Path


@dataclass(frozen=True)
class LakeTemplate:
    """A DuckLake built once per test process, which tests clone rather than build: PostgreSQL
    copies the catalog (``CREATE DATABASE ... TEMPLATE``, a file copy on the server) and the
    data folder is copied beside the test. Migrating an empty catalog and copying the shared
    CRM into it cost about a minute of setup per test; a clone costs about a second."""

    server: str  # the admin libpq string (``postgres_dsn``)
    name: str
    data: Path

    @classmethod
    def build(cls, server: str, folder: Path, fill: Callable[[duckdb.DuckDBPyConnection], None]):
        """A migrated lake under ``folder``, then ``fill(conn)`` (one connection, closed after:
        PostgreSQL copies a database only while nobody is connected to it)."""
        name = _create_database(server)
        data = folder / "lake"
        conn = duckdb.connect(":memory:", config=OFFLINE_CONFIG)
        try:
            attach_lake(conn, _with_dbname(server, name), str(data))
            conn.execute("SET TimeZone = 'UTC'")
            migrate(conn)
            fill(conn)
        finally:
            conn.close()
        return cls(server, name, data)

    @contextmanager
    def clone(self, folder: Path) -> Iterator[Lake]:
        """A copy of the lake with its files under ``folder`` (which must not exist), dropped
        after the block."""
        name = _create_database(self.server, template=self.name)
        try:
            lake = Lake(_with_dbname(self.server, name), folder)
            self._copy_files(lake)
            yield lake
        finally:
            _drop_database(self.server, name)

    def restore(self, lake: Lake) -> bool:
        """Make ``lake`` (same catalog name and folder) a copy of this one, if nobody is
        connected to its catalog (PostgreSQL refuses to drop it then): whether it did."""
        name = psycopg2.extensions.parse_dsn(lake.catalog)["dbname"]
        try:
            _drop_database(self.server, name, force=False)
        except psycopg2.errors.ObjectInUse:
            return False
        _create_database(self.server, template=self.name, name=name)
        shutil.rmtree(lake.data, ignore_errors=True)
        self._copy_files(lake)
        return True

    def _copy_files(self, lake: Lake) -> None:
        shutil.copytree(self.data, lake.data)
        # The catalog names its data folder; the copy's files are elsewhere (the files'
        # own paths are relative to it).
        with closing(psycopg2.connect(lake.catalog)) as pg, pg, pg.cursor() as cursor:
            cursor.execute(
                "UPDATE ducklake_metadata SET value = %s WHERE key = 'data_path'",
                [str(lake.data).rstrip("/") + "/"],
            )

    def drop(self) -> None:
        _drop_database(self.server, self.name)


class LakeTemplates:
    """The lake templates of this test process, each built on first use: ``migrated()``, an
    empty lake, and ``crm(crm, step)``, the shared CRM's state after ``step``."""

    def __init__(self, server: str, folder: Path) -> None:
        self.server, self.folder = server, folder
        self.built: dict[str, LakeTemplate] = {}

    def _get(self, key: str, fill: Callable[[duckdb.DuckDBPyConnection], None]) -> LakeTemplate:
        if key not in self.built:
            self.built[key] = LakeTemplate.build(self.server, self.folder / key, fill)
        return self.built[key]

    def migrated(self) -> LakeTemplate:
        return self._get("migrated", lambda conn: None)

    def crm(self, crm: SimulatedCrm, step: str) -> LakeTemplate:
        database = crm.homes[step].database
        key = f"{crm.config.contacts}-{crm.config.seed}-{step}"
        return self._get(key, lambda conn: copy_into_lake(conn, database))


def _create_database(server: str, *, template: str | None = None, name: str = "") -> str:
    name = name or f"revorch_{uuid.uuid4().hex[:12]}"
    with closing(psycopg2.connect(server)) as admin:
        admin.autocommit = True
        copy = f" TEMPLATE {template}" if template else ""
        admin.cursor().execute(f"CREATE DATABASE {name}{copy}")
    return name


def _drop_database(server: str, name: str, *, force: bool = True) -> None:
    with closing(psycopg2.connect(server)) as admin:
        admin.autocommit = True
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}{' WITH (FORCE)' * force}")


@pytest.fixture(scope="session")
def lake_templates(
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LakeTemplates]:
    """This test process's lake templates (each built once, on first use), dropped at its end."""
    templates = LakeTemplates(postgres_dsn, tmp_path_factory.mktemp("lake-templates"))
    yield templates
    for template in templates.built.values():
        template.drop()


@pytest.fixture
def migrated_lake(lake_templates: LakeTemplates, tmp_path: Path) -> Iterator[Lake]:
    """This test's own migrated, empty DuckLake (files under ``tmp_path``), dropped after it."""
    with lake_templates.migrated().clone(tmp_path / "lake") as lake:
        yield lake


@contextmanager
def _own_lake(request: pytest.FixtureRequest, folder: Path) -> Iterator[Lake | None]:
    if not access.is_lake():
        yield None
        return
    templates: LakeTemplates = request.getfixturevalue("lake_templates")
    with templates.migrated().clone(folder) as lake, pytest.MonkeyPatch.context() as env:
        env.setenv("REVORCH_DUCKLAKE_CATALOG", lake.catalog)
        env.setenv("REVORCH_DUCKLAKE_DATA", str(lake.data))
        yield lake


@pytest.fixture
def own_lake(
    request: pytest.FixtureRequest,
) -> Callable[[Path], AbstractContextManager[Lake | None]]:
    """``with own_lake(folder):`` the block's runs get a state store of their own, as each
    ``database`` is its own file on the embedded backend: on DuckLake (``state_backend``) a
    fresh migrated lake under ``folder``, which the environment names for the block."""
    return partial(_own_lake, request)


@contextmanager
def copied_state(request: pytest.FixtureRequest, database: Path, copy: Path) -> Iterator[Path]:
    copy.parent.mkdir(parents=True, exist_ok=True)
    if not access.is_lake():
        shutil.copyfile(database, copy)
        try:
            yield copy
        finally:
            copy.unlink()
        return
    source = f"ducklake:postgres:{settings.ducklake_catalog_dsn()}"  # this test's lake
    folder = copy.with_name(f"{copy.stem}-lake")
    try:
        with _own_lake(request, folder) as lake:
            assert lake is not None
            with closing(duckdb.connect(":memory:", config=OFFLINE_CONFIG)) as conn:
                attach_lake(conn, lake.catalog, str(lake.data))
                copy_into_lake(conn, source)
            yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


StateCopy = Callable[[Path, Path], AbstractContextManager[Path]]


@pytest.fixture
def state_copy(request: pytest.FixtureRequest) -> StateCopy:
    """``with state_copy(database, copy):`` a second, independent state store for the block,
    a copy of what the test's runs wrote to ``database``; ``materialize(database=copy)``,
    ``read_state(copy)`` and ``CrmHome(copy.parent).connect()`` (if it is named
    revorch.duckdb) use it. On the file, the file ``copy``; on DuckLake (``state_backend``) a
    second lake beside it with every table and view of the test's lake (``own_lake``)."""
    return partial(copied_state, request)


@pytest.fixture
def lake_store(migrated_lake: Lake):
    """A StateStore on this test's DuckLake (``migrated_lake``)."""
    from resources.state_store import StateStore

    return StateStore(
        database=":memory:",
        backend="ducklake",
        catalog_dsn=migrated_lake.catalog,
        data_path=str(migrated_lake.data),
        clock="data",
    )


# -- the shared CRM's state in a DuckLake -------------------------------------------------------


def copy_into_lake(conn: duckdb.DuckDBPyConnection, source: Path | str) -> None:
    """Every table and view of the state store ``source`` into the (migrated) lake: a file,
    or what ATTACH takes (another lake: ``ducklake:postgres:<catalog>``). What
    ``revorch lake import`` does without its checks (a template's lake may hold state)."""
    with attached(conn, str(source)):
        copy_state(conn)


def into_this_lake(database: Path) -> None:
    """On DuckLake (``state_backend``): the state file ``database`` into this test's lake,
    where the test's runs then read and write it. On the file: nothing to do."""
    if access.is_lake():
        with access.lake_writing() as conn:
            copy_into_lake(conn, database)


@pytest.fixture
def lake_home(
    simulated_crm: SimulatedCrm,
    lake_templates: LakeTemplates,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[CrmHome]:
    """The shared CRM after governance, its state in this test's own DuckLake (a clone of its
    template, ``lake_templates``), as this process's environment (REVORCH_STATE_BACKEND=ducklake).
    Its published copy stays on disk: readers must not read it."""
    for name in list(os.environ):
        if name.startswith(("REVORCH_", "DAGSTER_")):
            monkeypatch.delenv(name)
    home = simulated_crm.copy("governed", tmp_path / "crm-governed", into_lake=False)
    (tmp_path / "mcp.yaml").write_text("version: 1\nclients:\n  desk: {scopes: [read, propose]}\n")
    # Not tmp_path / "lake": with ``--state-backend ducklake`` that is ``migrated_lake``'s.
    with lake_templates.crm(simulated_crm, "governed").clone(tmp_path / "crm-lake") as lake:
        environment = {
            "REVORCH_STATE_BACKEND": "ducklake",
            "REVORCH_DUCKLAKE_CATALOG": lake.catalog,
            "REVORCH_DUCKLAKE_DATA": str(lake.data),
            "REVORCH_MCP_CONFIG": str(tmp_path / "mcp.yaml"),
            "REVORCH_HOME": str(home.root),
            "DAGSTER_HOME": str(home.root / "dagster"),
        }
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        yield home


def sent_actions_due_again() -> set[str]:
    """On this test's lake (``lake_home``): the actions the shared CRM already sent made due
    again (``ready``, as their next attempt; the trail keeps the last one); the ids of every
    due action."""
    with access.lake_writing() as conn:
        conn.execute(
            "UPDATE governance.actions SET status = 'ready', sent_at = NULL WHERE status = 'sent'"
        )
        return {
            action
            for (action,) in conn.execute(
                "SELECT action_id FROM governance.actions WHERE status IN ('ready', 'approved')"
            ).fetchall()
        }
