"""The `revorch` command: the operations that are not Dagster's own.

revorch quickstart            simulate a CRM, run the main job, print the funnel
revorch simulate [--live]     write simulated CRM changes into the landing zone
revorch import FILE           put a file of change events into the landing zone
revorch import --mapping M FILE|DIR...   land CRM exports (CSV) through a mapping file
revorch poll salesforce       land Salesforce changes since the last poll (--cdc SECONDS: and CDC)
revorch poll hubspot          land what changed in HubSpot since the last poll
revorch ingest                run the main job (ingest waiting batches, refresh assets)
revorch report funnel         print the funnel summary
revorch report weekly [--out PATH] [--pdf]   the weekly report as HTML (and PDF)
revorch estate import FILE --format hubspot|salesforce|zapier|csv   import automations
revorch estate report         the automation estate ranked: keep, migrate or retire
revorch approvals [list]      actions waiting for a person
revorch approvals approve|reject ID... --by NAME [--comment TEXT]
revorch dispatch              send approved and allowed actions now
revorch dispatch release [--journal ID --by NAME]   a lost dispatcher's `sending` actions
revorch audit verify [--incremental]   recompute the audit trail's hash chain against its anchors
revorch policy check          what a compromised model could get sent without a person
revorch history COMPANY_ID    every decision and action about one company, in order
revorch ui                    start the Dagster UI (dagster dev) on this project
revorch serve                 receive webhooks (HubSpot, Standard Webhooks) into the landing zone
revorch mcp [--http]          Revorch as an MCP server, over stdio or HTTP on loopback (docs/mcp.md)

A mistake (a missing file, an invalid config, no state store yet) prints one line saying what
is wrong and what to do, and exits with code 2; `revorch --debug ...` shows the traceback.
When the reader of the output stops early (`revorch report funnel | head -1`), revorch stops
quietly with code 141, as a command ended by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from revorch import settings
from revorch.instance import ensure_dagster_home
from revorch.landing import LandingZone, check_source_name
from revorch.reports.funnel import funnel_summary


class RevorchError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2, no traceback."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a reader that left early is found here, not at exit
        return code
    except BrokenPipeError:
        return _reader_left()
    except Exception as error:
        if args.debug:
            raise
        message, code = _explain(error)
        print(f"revorch {args.command}: {message}", file=sys.stderr)
        return code


def _reader_left() -> int:
    """The reader closed our stdout early (`revorch report funnel | head -1`): stop quietly
    with 141, the code a shell shows for a process ended by SIGPIPE, as `cat` would end."""
    # The recipe from Python's signal docs: stdout to devnull, so the flush at exit is silent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _explain(error: Exception) -> tuple[str, int]:
    """One line for the terminal, and the exit code: 2 for a mistake, 1 for a fault."""
    if isinstance(error, RevorchError):
        return str(error), 2
    if isinstance(error, duckdb.IOException):
        return (
            f"{str(error).splitlines()[0]}; if a run is writing the state store, "
            "try again when it ends",
            2,
        )
    if isinstance(error, OSError) and error.filename:
        return (
            f"cannot use {error.filename}: {error.strerror}; check the path, or set "
            f"REVORCH_HOME (now {settings.revorch_home()}) to a folder you can write to",
            2,
        )
    return f"{type(error).__name__}: {error} (run `revorch --debug ...` for the traceback)", 1


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, like every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _source_name(value: str) -> str:
    try:
        return check_source_name(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="revorch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    quick = commands.add_parser("quickstart", help="simulate a CRM, run the main job, summarise")
    _simulation_options(quick)
    quick.set_defaults(handler=_quickstart)

    sim = commands.add_parser("simulate", help="write simulated CRM changes to the landing zone")
    _simulation_options(sim)
    sim.add_argument("--malformed", type=float, default=0.0, help="share of malformed lines")
    sim.add_argument("--duplicates", type=float, default=0.0, help="share of re-sent events")
    sim.add_argument("--live", action="store_true", help="after the history, keep streaming")
    sim.add_argument("--interval", type=float, default=2.0, help="seconds between live batches")
    sim.add_argument("--events-per-batch", type=int, default=200)
    sim.add_argument("--max-batches", type=int, default=None, help="stop after N live batches")
    sim.add_argument(
        "--estate",
        action="store_true",
        help="also land a small estate of automations; their inventory goes to "
        "$REVORCH_HOME/estate/ (docs/estate.md)",
    )
    sim.set_defaults(handler=_simulate)

    imp = commands.add_parser(
        "import", help="put a file of change events, or CRM exports (CSV), into the landing zone"
    )
    imp.add_argument(
        "file",
        type=Path,
        nargs="+",
        help="newline-delimited JSON, one event per line; with --mapping, CSV files or folders",
    )
    imp.add_argument(
        "--mapping",
        help="a mapping file, or the name of a shipped one (hubspot_export, salesforce_export, "
        "maven_crm): read the files as CRM exports (docs/sources/csv_import.md)",
    )
    imp.add_argument(
        "--source",
        default="import",
        type=_source_name,
        help="source name recorded with the batch (lower-case letters, digits, '_')",
    )
    imp.add_argument(
        "--force", action="store_true", help="land a file that does not look like NDJSON"
    )
    imp.set_defaults(handler=_import)

    poll = commands.add_parser("poll", help="land a CRM's changes since the last poll")
    crms = poll.add_subparsers(required=True, metavar="SOURCE", dest="source")
    _salesforce_poll_parser(crms)
    crms.add_parser(
        "hubspot",
        help="contacts, companies, deals, tickets and owners changed since the cursor",
        description=(
            "Settings come from HUBSPOT_ACCESS_TOKEN and REVORCH_HUBSPOT_* variables "
            "(docs/sources/hubspot.md)."
        ),
    ).set_defaults(handler=_poll_hubspot)

    ingest = commands.add_parser("ingest", help="run the main job once")
    ingest.set_defaults(handler=_ingest)

    rebuild = commands.add_parser(
        "rebuild", help="run the main job, rebuilding state and stages from the whole change log"
    )
    rebuild.set_defaults(handler=_rebuild)

    sql = commands.add_parser("sql", help="run a read-only SQL query on the state store")
    sql.add_argument(
        "query", help='e.g. "SELECT lifecycle_stage, count(*) FROM contacts GROUP BY 1"'
    )
    sql.add_argument(
        "--format",
        choices=["box", "csv", "json", "markdown"],
        default="box",
        help="box (for reading, at most 100 rows shown) or every row as csv, json or markdown",
    )
    sql.set_defaults(handler=_sql)

    backtest = commands.add_parser(
        "backtest", help="train the models on the past, test them on a later period"
    )
    backtest.add_argument("--split", help="first day of the test period (YYYY-MM-DD)")
    backtest.add_argument(
        "--model",
        choices=("lead", "deal", "renewal", "all"),
        default="all",
        help="this model (default: all three) beside plain scikit-learn baselines on the same "
        "features and split: AUC, top-decile precision and lift, Brier, calibration, the "
        "outcome's counts",
    )
    backtest.set_defaults(handler=_backtest)
    for long_work in (quick, sim, ingest, rebuild, backtest):
        long_work.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress: a bar while simulating or backtesting, a line per Dagster step "
            "as it starts and ends (default: on a terminal, not under CI=true)",
        )

    replay = commands.add_parser("replay", help="replay a run's agent decisions from the record")
    replay.add_argument("run_id")
    replay.add_argument("--what-if", action="store_true", help="ask again and report changes")
    replay.add_argument("--prompt-version", help="with --what-if: another prompt version")
    replay.add_argument("--model", help="with --what-if: another model (needs an LLM endpoint)")
    replay.set_defaults(handler=_replay)

    report = commands.add_parser("report", help="print the funnel, or make the weekly report")
    report.add_argument("name", choices=["funnel", "weekly"])
    report.add_argument(
        "--out", type=Path, help="weekly: the HTML file (default $REVORCH_HOME/reports/)"
    )
    report.add_argument("--pdf", action="store_true", help="weekly: also a PDF (Chromium)")
    report.set_defaults(handler=_report)

    _estate_parser(commands)

    lake = commands.add_parser(
        "lake",
        help="move the state from the embedded file onto DuckLake (docs/deployment.md)",
        description="`revorch lake import [FILE]` copies every table and view of a state file "
        "(default: the working file, $REVORCH_HOME/revorch.duckdb) into the DuckLake the "
        "environment names (REVORCH_STATE_BACKEND=ducklake), in one transaction, then verifies "
        "the audit chain there. Only an empty lake takes it.",
    )
    lake.add_argument("verb", choices=["import"])
    lake.add_argument(
        "file", nargs="?", type=Path, help="the state file (default: the working file)"
    )
    lake.set_defaults(handler=_lake_import)

    approvals = commands.add_parser("approvals", help="list, approve or reject waiting actions")
    approvals.add_argument("verb", nargs="?", default="list", choices=["list", "approve", "reject"])
    approvals.add_argument("action_ids", nargs="*", metavar="ACTION_ID")
    approvals.add_argument("--by", default=os.environ.get("USER", ""), help="who decides")
    approvals.add_argument("--comment", default="", help="why (required to reject)")
    approvals.set_defaults(handler=_approvals)

    dispatch = commands.add_parser(
        "dispatch",
        help="send approved and allowed actions now; `release`: a lost dispatcher's actions",
        description="Send what is due now. `revorch dispatch release` lists the dispatcher "
        "journals holding actions in `sending`; with --journal ID, it makes the actions of a "
        "dispatcher that is gone for good due again (docs/operations.md).",
    )
    dispatch.add_argument("verb", nargs="?", choices=["release"], help="release: see above")
    dispatch.add_argument(
        "--journal", metavar="ID", help="release: the lost dispatcher's journal id (as listed)"
    )
    dispatch.add_argument(
        "--by", default=os.environ.get("USER", ""), help="release: who releases (audited)"
    )
    dispatch.set_defaults(handler=_dispatch)

    audit = commands.add_parser("audit", help="check the audit trail")
    audit.add_argument("verb", choices=["verify"])
    audit.add_argument(
        "--incremental",
        action="store_true",
        help="only the rows after the last verified anchor (the default recomputes every row)",
    )
    audit.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a bar of the rows verified (default: on a terminal, not under CI=true)",
    )
    audit.set_defaults(handler=_audit)

    policy = commands.add_parser("policy", help="check the policy against a compromised model")
    policy.add_argument("verb", choices=["check"])
    policy.set_defaults(handler=_policy)

    history = commands.add_parser("history", help="every decision and action about a company")
    history.add_argument("company_id")
    history.set_defaults(handler=_history)

    ui = commands.add_parser("ui", help="start the Dagster UI (dagster dev)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=_ui)

    serve = commands.add_parser(
        "serve", help="receive webhooks into the landing zone (docs/sources/webhooks.md)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes (each lands its own batches)"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)

    mcp = commands.add_parser(
        "mcp", help="serve Revorch to MCP clients over stdio, or HTTP on loopback (docs/mcp.md)"
    )
    mcp.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    mcp.add_argument(
        "--client", default="local", help="over stdio: the client (config/mcp.yaml) it serves"
    )
    mcp.add_argument("--host", default="127.0.0.1", help="with --http: a loopback address")
    mcp.add_argument("--port", type=int, default=8765, help="with --http (0: any free port)")
    mcp.set_defaults(handler=_mcp)
    for command in commands.choices.values():
        # `--debug` also after the command; SUPPRESS keeps the value given before it.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


def _estate_parser(commands: argparse._SubParsersAction) -> None:
    estate = commands.add_parser(
        "estate", help="import existing automations and audit them (docs/estate.md)"
    )
    verbs = estate.add_subparsers(required=True, metavar="VERB", dest="verb")
    imp = verbs.add_parser("import", help="import an inventory of automations")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", required=True, choices=["hubspot", "salesforce", "zapier", "csv"])
    imp.set_defaults(handler=_estate_import)
    verbs.add_parser("report", help="the automations ranked: keep, migrate or retire").set_defaults(
        handler=_estate_report
    )
    for verb in verbs.choices.values():
        verb.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)


def _estate_import(args: argparse.Namespace) -> int:
    from resources import StateStore
    from revorch.estate.inventory import InventoryError, import_inventory

    if not args.file.is_file():
        raise RevorchError(f"no file {args.file}")
    settings.database_path().parent.mkdir(parents=True, exist_ok=True)
    # On DuckLake the catalog the audit reads, not the file.
    store = StateStore.configured(settings.database_path())
    try:
        with store.get_connection() as conn:
            result = import_inventory(conn, args.file, args.format)
    except InventoryError as error:
        raise RevorchError(f"{args.file}: {error}") from error
    print(
        f"{args.file.name}: {result.rows_read} rows, {len(result.automations)} automations "
        f"loaded, {len(result.refusals)} refused."
    )
    for refusal in result.refusals:
        print(f"  row {refusal.row_number}: {refusal.reason} ({refusal.detail})")
    return 0


def _lake_import(args: argparse.Namespace) -> int:
    from revorch.governance.audit import verify
    from revorch.state import access
    from revorch.state.move import MoveError, import_file

    if not access.is_lake():
        raise RevorchError(
            "the state is on the embedded file: set REVORCH_STATE_BACKEND=ducklake and "
            "REVORCH_DUCKLAKE_CATALOG (docs/deployment.md) to name the lake to import into"
        )
    source = args.file or settings.database_path()
    if not source.is_file():
        raise RevorchError(f"no state file {source}")
    try:
        with access.lake_writing() as conn:
            moved = import_file(conn, source)
            trail = verify(conn, settings.audit_anchor_path())
    except MoveError as error:
        raise RevorchError(f"{source}: {error}; nothing was copied") from error
    except duckdb.IOException as error:
        first_line = str(error).splitlines()[0]
        raise RevorchError(f"cannot reach the DuckLake catalog: {first_line}") from error
    print(
        f"{source}: {len(moved.tables)} tables, {moved.rows:,} rows and {len(moved.views)} "
        f"views copied into {access.source()}."
    )
    for view, why in moved.views_left.items():
        print(f"  view {view} not created ({why}); the next run creates it again")
    if not trail.intact:
        print("The audit trail copied is not intact:", *trail.summary(), sep="\n  ")
        return 2
    print(f"The audit trail is intact in the lake ({trail.rows:,} rows, head {trail.head_seq}).")
    return 0


def _estate_report(args: argparse.Namespace) -> int:
    from revorch.estate.report import estate_report

    with _reading() as conn:
        try:
            text = estate_report(conn)
        except duckdb.CatalogException as error:
            raise RevorchError(
                "no audit yet (metrics.automation_estate); run `revorch ingest` first"
            ) from error
    print(text)
    return 0


def _salesforce_poll_parser(crms: argparse._SubParsersAction) -> None:
    salesforce = crms.add_parser(
        "salesforce",
        help="REST poll of every object since its cursor, then optionally CDC events",
        description="Settings come from SALESFORCE_* variables (docs/sources/salesforce.md).",
    )
    salesforce.add_argument(
        "--cdc",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after the poll, take Change Data Capture events for at most SECONDS",
    )
    salesforce.add_argument(
        "--idle", type=float, default=10.0, help="stop CDC once no event came for this long"
    )
    salesforce.set_defaults(handler=_poll_salesforce)


def _poll_salesforce(args: argparse.Namespace) -> int:
    from revorch.sources.salesforce.sync import SalesforceSettings, sync

    try:
        config = SalesforceSettings.from_env()
        polled, streamed = sync(config, _zone(), cdc_seconds=args.cdc, cdc_idle_seconds=args.idle)
    except ValueError as error:
        raise RevorchError(str(error)) from error
    changed = ", ".join(f"{name} {count}" for name, count in polled.changed.items())
    print(f"Salesforce: changed {changed}; deleted {sum(polled.deleted.values())}")
    if streamed is not None:
        print(
            f"CDC: {streamed.received} events, {streamed.landed} changes landed, "
            f"{streamed.skipped_own} own writes skipped, {streamed.reread} re-read"
        )
    print("Run `revorch ingest` to load them (or let `revorch ui` pick them up)")
    return 0


def _simulation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contacts", type=int, default=5_000, help="contacts to simulate")
    parser.add_argument("--seed", type=int, default=42, help="same seed, same events")


def _zone() -> LandingZone:
    return LandingZone(settings.landing_path()).ensure()


def _simulate(args: argparse.Namespace) -> int:
    from revorch.simulator import SimulationConfig, simulate_history, stream_live

    config = SimulationConfig(
        contacts=args.contacts,
        seed=args.seed,
        malformed_share=args.malformed,
        duplicate_share=args.duplicates,
    )
    zone = _zone()
    summary = simulate_history(zone, config, progress=_progress_bar("Writing batches", args))
    print(f"Wrote {summary.events:,} events in {summary.batches} batches to {zone.incoming_dir}")
    if args.estate:
        from revorch.simulator.estate import simulate_estate

        estate = simulate_estate(zone, config, settings.revorch_home() / "estate")
        print(
            f"Wrote {estate.events:,} changes of {len(estate.by_automation)} automations; "
            f"their inventory: {', '.join(str(p) for p in estate.inventory)}"
        )
    if args.live:
        print(f"Streaming a batch every {args.interval}s (Ctrl-C to stop)...")
        try:
            for path in stream_live(
                zone,
                config,
                events_per_batch=args.events_per_batch,
                interval_seconds=args.interval,
                max_batches=args.max_batches,
            ):
                print(f"  landed {path.name}", flush=True)
        except KeyboardInterrupt:
            pass
    return 0


def _progress_bar(what: str, args: argparse.Namespace):
    """A tqdm bar on stderr around an iterable of known length, or None when progress is off
    (see ``_wants_progress``)."""
    if not _wants_progress(args.progress):
        return None
    from tqdm import tqdm

    print(f"Simulating {args.contacts:,} contacts (the whole history is planned first)...")
    return lambda items, total: tqdm(items, total=total, desc=what, unit="batch", file=sys.stderr)


@contextmanager
def _rows_progress(what: str, asked: bool | None) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar of rows on stderr, moved by calls of (rows done, rows in all); None when
    progress is off (see ``_wants_progress``)."""
    if not _wants_progress(asked):
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=what, unit="row", unit_scale=True, file=sys.stderr) as bar:

        def shown(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield shown


def _wants_progress(asked: bool | None) -> bool:
    """Progress when asked (--progress), else on a terminal and not under CI=true, so that
    pipes, logs and tests stay clean."""
    if asked is not None:
        return asked
    return sys.stdout.isatty() and os.environ.get("CI", "").lower() != "true"


def _import(args: argparse.Namespace) -> int:
    if args.mapping:
        if args.source != "import" or args.force:
            raise RevorchError(
                "--source and --force are for NDJSON files; with --mapping, the mapping's "
                "source: names the batch"
            )
        return _import_exports(args)
    if len(args.file) > 1:
        raise RevorchError("give one NDJSON file, or CSV exports with --mapping")
    file = args.file[0]
    if file.is_dir():
        raise RevorchError(f"{file} is a folder; give one NDJSON file (one event per line)")
    if not file.is_file():
        raise RevorchError(f"no such file: {file}")
    if not args.force:
        _check_ndjson(file)
    zone = _zone()
    with zone.open_batch(args.source) as tmp:
        shutil.copyfile(file, tmp)
    print(f"Landed {file} as a batch in {zone.incoming_dir}; run `revorch ingest` to load it")
    return 0


def _import_exports(args: argparse.Namespace) -> int:
    """CSV exports through a mapping: every row landed or quarantined, with a report."""
    from revorch.sources.csv_import import MappingError, import_files, load_mapping
    from revorch.sources.csv_import.mapping import shipped_mapping

    try:
        mapping_path = shipped_mapping(args.mapping)
        mapping = load_mapping(mapping_path)
        report = import_files(
            args.file,
            mapping,
            _zone(),
            settings.revorch_home() / "imports",
            mapping_name=str(mapping_path),
            progress=_progress_bar_wanted(),
        )
    except MappingError as error:
        raise RevorchError(str(error)) from error
    print("\n".join(report.lines()))
    if report.batch:
        print(f"Landed {report.loaded:,} events as batch {report.batch}; run `revorch ingest`")
    else:
        print("Nothing landed: every row was quarantined")
    print(f"Report: {report.report_path}")
    if report.quarantine_path:
        print(f"Quarantined rows: {report.quarantine_path}")
    return 0


def _progress_bar_wanted() -> bool:
    """A bar on a terminal only: not in CI logs, pipes or files."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _poll_hubspot(args: argparse.Namespace) -> int:
    from revorch.sources.hubspot import config
    from revorch.sources.hubspot.own_writes import OwnWrites
    from revorch.sources.hubspot.poller import poll

    try:
        api, wanted = config.api_from_env(), config.poll_settings()
    except ValueError as wrong:
        raise RevorchError(str(wrong)) from wrong
    own_writes = OwnWrites(config.own_writes_path())
    report = poll(api, _zone(), config.cursor_path(), own_writes, wanted)
    print(f"HubSpot: {report}. Run `revorch ingest` to load it (or let `revorch ui` do it).")
    return 0


NDJSON_HINT = "each line must be one JSON event (docs/landing_zone.md); --force lands it anyway"


def _check_ndjson(path: Path) -> None:
    """Refuse a file that is plainly not NDJSON (binary, CSV, a JSON array) before it lands."""
    head = path.read_bytes()[: 64 * 1024]
    if b"\0" in head:
        raise RevorchError(f"{path} is a binary file, not NDJSON; {NDJSON_HINT}")
    first = next((line.strip() for line in head.splitlines() if line.strip()), b"")
    if first and not first.startswith(b"{"):
        shown = first[:40].decode("utf-8", errors="replace")
        raise RevorchError(
            f"{path} does not look like NDJSON (its first line starts {shown!r}); {NDJSON_HINT}"
        )


def _check_configs() -> None:
    """Load and validate the three config files before a run starts, naming file and key."""
    from revorch.agents.config import load_agents_config
    from revorch.governance.policy import load_policy
    from revorch.lifecycle.config import load_lifecycle_config

    try:
        load_lifecycle_config(settings.lifecycle_config_path())
        load_agents_config(settings.agents_config_path())
        load_policy(settings.policy_path())
    except ValueError as invalid:
        raise RevorchError(f"{invalid}; fix it and run again") from invalid


def _run_main_job(command: str, *, full_rebuild: bool = False, progress: bool | None = None) -> int:
    """Run the main job and print what it did: the funnel and this run's summary when it
    succeeded, what failed and what to do otherwise; what was kept when Ctrl-C or SIGTERM
    stopped it (exit code 128 + the signal's number). The exit code."""
    from revorch.definitions import full_rebuild_config

    _check_configs()
    llm = _llm_preflight()
    try:
        result = _run_job(
            "revorch_main",
            full_rebuild_config()["ops"] if full_rebuild else {},
            resources={"llm": llm},
            tags={"revorch/llm_tier": llm.tier},
            progress=_wants_progress(progress),
            stoppable=True,
        )
    except _Stopped as stopped:
        return _stopped(command, stopped)
    if result.success:
        print()
        print(_report_text())
    else:
        print(f"revorch {command}: the main job failed: {_failure(result)}", file=sys.stderr)
    print()
    print(_summary_of(result), flush=True)
    return 0 if result.success else 1


class _Stopped(Exception):
    """Ctrl-C or SIGTERM stopped run ``run_id``; ``result`` is None when it stopped before
    the run could report."""

    def __init__(self, stop, run_id: str, result) -> None:
        super().__init__(stop.name)
        self.stop = stop
        self.run_id = run_id
        self.result = result


def _stopped(command: str, stopped: _Stopped) -> int:
    """Say where the run stopped and what it committed to the change log, read from the
    state store itself: ingestion commits a run's batches in transactions of 20 with their
    rows in ``landing_batches``, so a batch is either all there or not at all."""
    interrupted = []
    if stopped.result is not None:
        interrupted = [e.step_key for e in stopped.result.all_events if e.is_step_failure]
        summary = _summary_of(stopped.result, with_failures=False)
        print(summary, file=sys.stderr)
    where = f" in step {', '.join(interrupted)}" if interrupted else ""
    print(f"\nrevorch {command}: stopped by {stopped.stop.name}{where}.", file=sys.stderr)
    committed = _committed_by(stopped.run_id)
    if committed is None:
        print(
            "What this run committed could not be read: DuckDB had not released the "
            "interrupted step's database within "
            f"{COMMITTED_READ_SECONDS:.0f} s. Every transaction it committed is kept; "
            "`revorch ingest` loads what waits.",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        # The read still waits in a thread, inside DuckDB: exiting normally would wait too.
        os._exit(stopped.stop.exit_code)
    batches, loaded = committed
    if batches == 0:
        print(
            "Nothing was ingested: the stop came before ingestion committed a batch. They "
            "wait in the landing zone; `revorch ingest` loads them.",
            file=sys.stderr,
        )
    else:
        print(
            f"Committed: {loaded:,} changes from {batches:,} batches are in the change log, "
            "with the steps that finished before the stop. `revorch ingest` brings the rest "
            "up to date.",
            file=sys.stderr,
        )
    return stopped.stop.exit_code


# How long a stopped run waits to read what it committed. Opening the state store again in
# the stopped process waited for good after about one stop in 170 here (DuckDB 1.5.5,
# a stop in the change log's first transaction): the interrupted step's connection was
# closed, yet its database instance stayed alive, and DuckDB waits for an instance of the same
# file to finish closing before it opens one, in an unbounded spin (DBInstanceCache; the same
# wait as duckdb/duckdb-java#277, which duckdb/duckdb-r#2644 bounds in the engine: an
# unfinished result's client context keeps the instance). tests/test_stop.py.
COMMITTED_READ_SECONDS = 60.0


def _committed_by(run_id: str) -> tuple[int, int] | None:
    """Batches and changes run ``run_id`` committed to the change log; None if they could
    not be read within :data:`COMMITTED_READ_SECONDS`."""
    import threading

    found: list = []

    def read() -> None:
        try:
            found.append(_read_committed(run_id))
        except BaseException as error:  # raised again in the caller's thread
            found.append(error)

    # DuckDB releases the GIL while it opens a database: a thread can be waited on.
    reader = threading.Thread(target=read, name="committed-by", daemon=True)
    reader.start()
    reader.join(COMMITTED_READ_SECONDS)
    if not found:
        return None
    if isinstance(found[0], BaseException):
        raise found[0]
    return found[0]


def _read_committed(run_id: str) -> tuple[int, int]:
    from resources.state_store import CONNECTION_CONFIG

    database = settings.database_path()
    if not database.exists():
        return 0, 0
    # The run's connections are closed; opened as the state store opens it all the same.
    with duckdb.connect(str(database), config=CONNECTION_CONFIG) as conn:
        if not conn.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'landing_batches'"
        ).fetchone()[0]:
            return 0, 0
        batches, loaded = conn.execute(
            "SELECT count(*), coalesce(sum(loaded), 0) FROM landing_batches WHERE run_id = ?",
            [run_id],
        ).fetchone()
    return batches, int(loaded)


def _summary_of(result, *, with_failures: bool = True) -> str:
    """This run's summary (revorch/reports/run_summary.py) from the events of its steps."""
    from revorch.reports.run_summary import RunOutcome, run_summary

    metadata = {
        "/".join(event.asset_key.path): {
            key: value.value for key, value in event.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }
    failed = {
        event.step_key: _step_error(event.step_failure_data)
        for event in result.all_events
        if event.is_step_failure and with_failures
    }
    return run_summary(RunOutcome(result.run_id, metadata, failed, _config_snapshot(result)))


def _config_snapshot(result) -> dict[str, str]:
    """The config files the run read when it started, by name, with their content hashes
    (tagged on the run while it ran, so read back from the instance)."""
    import dagster as dg

    from resources.config_snapshot import TAG_PREFIX

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(result.run_id)
    tags = run.tags if run is not None else {}
    return {
        name.removeprefix(TAG_PREFIX): value
        for name, value in sorted(tags.items())
        if name.startswith(TAG_PREFIX)
    }


def _step_error(data) -> str:
    """A failed step's own words: its dg.Failure, else the first line of the innermost error
    (Dagster wraps what the step raised in an error of its own)."""
    if data.user_failure_data:
        return data.user_failure_data.description
    error = data.error
    while error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[0]


def _llm_preflight():
    """Check the LLM endpoint once before a run that may call it; print what the agents will
    use. A failed check gives the run an LLM resource that is switched off, so its agents
    decide offline at once instead of spending every call's timeout and retries."""
    from resources import LlmResource, default_resources, llm_base_url
    from revorch.agents.config import load_agents_config
    from revorch.agents.preflight import check_llm_endpoint

    configured = default_resources()["llm"]
    if not configured.enabled:
        print(
            "LLM tier: off (neither OPENAI_API_KEY nor REVORCH_LLM_BASE_URL is set); "
            "the agents decide offline.",
            flush=True,
        )
        return configured
    config = load_agents_config(settings.agents_config_path())
    found = check_llm_endpoint(
        llm_base_url(),
        os.environ.get("OPENAI_API_KEY") or "no-key",
        {agent.model for agent in config.agents.values()},
    )
    print(found.line, flush=True)
    if found.online:
        return configured
    return LlmResource(offline_reason=found.offline_reason)


def _run_job(
    name: str,
    ops: dict,
    *,
    log_level: str = "WARNING",
    resources: dict | None = None,
    tags: dict | None = None,
    progress: bool = False,
    stoppable: bool = False,
    say_waiting: bool = False,
):
    """Run one of Revorch's jobs in this process, recorded in the project's instance;
    ``resources`` replace the definitions' by key for this run; ``progress`` prints a line
    per step as it starts and ends. ``stoppable``: Ctrl-C or SIGTERM cancels the run within
    seconds (revorch/stopping.py) and raises :class:`_Stopped`. ``say_waiting``: while the
    run waits for the DuckDB writer, say on stderr which run holds it."""

    ensure_dagster_home()
    from revorch.definitions import defs
    from revorch.instance.recovery import in_process_run_tags, recover_abandoned_runs
    from revorch.instance.writer import in_process_instance

    # The terminal gets warnings only; every event is still in the run's log in the UI.
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if ops:
        run_config["ops"] = ops
    job = defs.resolve_job_def(name)
    run_id = str(uuid.uuid4())  # known before the run starts, for progress and stopping
    with in_process_instance(job) as (instance, hold_writer):
        # A run killed earlier would hold the duckdb_writer slot and block this one forever.
        for recovered in recover_abandoned_runs(instance):
            print(recovered, flush=True)
        with contextlib.ExitStack() as stack:
            if progress:
                stack.enter_context(_step_progress(instance, run_id))
            if say_waiting:
                from revorch.instance.writer import say_while_waiting

                stack.enter_context(say_while_waiting(instance, run_id, _say))
            stop = stack.enter_context(_cancel_on_signal(instance, run_id)) if stoppable else None
            stack.enter_context(hold_writer(run_id))
            result = None
            try:
                result = job.execute_in_process(
                    instance=instance,
                    run_config=run_config,
                    raise_on_error=False,
                    tags={**in_process_run_tags(), **(tags or {})},
                    resources=resources,
                    run_id=run_id,
                )
            except KeyboardInterrupt:
                if stop is None:
                    raise
                # Before or after Dagster's own handling of the signal: the run is not done.
        if stop:
            raise _Stopped(stop, run_id, result)
        return result


def _say(line: str) -> None:
    print(f"revorch: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _cancel_on_signal(instance, run_id: str):
    """On Ctrl-C or SIGTERM, mark the run as canceling, so Dagster's own interrupt handling
    (raised in the step that runs, or when the next one starts) ends it as canceled, and
    interrupt its DuckDB query. A run still going after the grace period is marked canceled
    and the process exits."""
    from revorch.stopping import GRACE_SECONDS, stop_on_signal

    def on_stop(number: int) -> None:
        print(
            f"\nStopping ({_signal_name(number)}): the step that runs is interrupted, no "
            "further step starts...",
            file=sys.stderr,
            flush=True,
        )
        if run := instance.get_run_by_id(run_id):
            instance.report_run_canceling(run)

    def on_timeout(number: int) -> None:
        print(
            f"revorch: the run did not stop within {GRACE_SECONDS:.0f} s of "
            f"{_signal_name(number)}; exiting now. DuckDB keeps only committed transactions "
            "(ingestion commits batches 20 at a time); `revorch ingest` loads what waits.",
            file=sys.stderr,
            flush=True,
        )
        if run := instance.get_run_by_id(run_id):
            instance.report_run_canceled(run)

    with stop_on_signal(on_stop, on_timeout=on_timeout) as stop:
        yield stop


def _signal_name(number: int) -> str:
    import signal

    return signal.Signals(number).name


@contextlib.contextmanager
def _step_progress(instance, run_id: str):
    """A line per step as it starts and ends, read from the run's event log by a thread (the
    run itself executes in this one)."""
    import threading

    import dagster as dg

    kinds = {
        dg.DagsterEventType.STEP_START: "started",
        dg.DagsterEventType.STEP_SUCCESS: "done",
        dg.DagsterEventType.STEP_FAILURE: "FAILED",
    }
    stop = threading.Event()
    cursor = None

    def print_new() -> None:
        nonlocal cursor
        found = instance.get_records_for_run(run_id, cursor=cursor, of_type=set(kinds))
        cursor = found.cursor
        for record in found.records:
            event = record.event_log_entry
            print(f"  step {event.step_key} {kinds[event.dagster_event_type]}", flush=True)

    def follow() -> None:
        while not stop.wait(0.5):
            print_new()

    follower = threading.Thread(target=follow, name="step-progress", daemon=True)
    follower.start()
    try:
        yield
    finally:
        stop.set()
        follower.join()
        print_new()


def _ingest(args: argparse.Namespace) -> int:
    return _run_main_job("ingest", progress=args.progress)


def _rebuild(args: argparse.Namespace) -> int:
    return _run_main_job("rebuild", full_rebuild=True, progress=args.progress)


def _quickstart(args: argparse.Namespace) -> int:
    from revorch.simulator import SimulationConfig, simulate_history

    _check_configs()
    zone = _zone()
    summary = simulate_history(
        zone,
        SimulationConfig(contacts=args.contacts, seed=args.seed),
        progress=_progress_bar("Writing batches", args),
    )
    print(f"Simulated a CRM: {summary.events:,} change events in {summary.batches} batches.")
    if code := _run_main_job("quickstart", progress=args.progress):
        return code
    print()
    print(f"Outbox (actions sent): {settings.outbox_path()}")
    print(f"DuckDB state store: {settings.database_path()}")
    print(f"  analysts' copy:    {settings.published_path()} (refreshed after every run)")
    print('  query it:          .venv/bin/revorch sql "SELECT * FROM contacts LIMIT 5"')
    print("Dagster UI:          .venv/bin/revorch ui   then open http://127.0.0.1:3000")
    return 0


@contextmanager
def _reading(*, working: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """The state store for reading: the published copy, or the live DuckLake catalog
    (revorch/state/access.py); a clear error when there is none yet."""
    from revorch.state.access import NoState, StateBusy, reading

    try:
        with reading(working=working, or_working=True) as conn:
            yield conn
    except (NoState, StateBusy) as error:
        raise RevorchError(str(error)) from error


def _report_text() -> str:
    with _reading() as conn:
        return funnel_summary(conn)


def _sql(args: argparse.Namespace) -> int:
    from revorch.reports.formats import render  # polars: imported only when needed

    with _reading() as conn:
        try:
            result = conn.sql(args.query)
            if result is None:  # a statement with no result, such as SET
                return 0
            if args.format == "box":
                result.show(max_rows=100)
            else:
                sys.stdout.write(render(result, args.format).rstrip("\n") + "\n")
        except duckdb.Error as error:
            raise RevorchError(f"{str(error).splitlines()[0]}; check the query") from error
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from revorch.agents.config import load_agents_config
    from revorch.agents.model_backtest import PHASES, backtest_models
    from revorch.agents.offline.history import KINDS
    from revorch.lifecycle.config import load_lifecycle_config

    try:
        agents = load_agents_config(settings.agents_config_path())
        lifecycle = load_lifecycle_config(settings.lifecycle_config_path())
    except ValueError as invalid:
        raise RevorchError(f"{invalid}; fix it and run again") from invalid
    kinds = KINDS if args.model == "all" else (args.model,)
    with (
        _reading() as conn,
        tqdm(
            total=len(kinds) * len(PHASES),
            desc="Backtest",
            unit="phase",
            file=sys.stderr,
            disable=not _wants_progress(args.progress),
        ) as bar,
    ):

        def progress(kind: str, phase: str) -> None:
            bar.update(kinds.index(kind) * len(PHASES) + PHASES.index(phase) - bar.n)
            bar.set_postfix_str(f"{kind} model: {phase}")

        reports, skipped = backtest_models(
            conn,
            kinds,
            split=args.split,
            config=lifecycle,
            models=agents.models,
            scoring=agents.scoring,
            progress=progress,
        )
        bar.update(bar.total - bar.n)
    print("\n\n".join(report.to_text() for report in reports))
    for kind, why in skipped.items():
        print(f"\n{kind.capitalize()} model: not backtested ({why})")
    for report in reports:
        for warning in report.worse_than_baseline:
            print(f"warning: {warning}", file=sys.stderr)
        for warning in report.outcome_warnings:
            print(f"warning: {report.kind} model {warning}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from resources import default_resources
    from revorch.agents.models import stored_tier
    from revorch.agents.registry import agent_specs
    from revorch.agents.replay import replay_run, what_if

    with _reading() as conn:
        _check_run_recorded(conn, args.run_id)
        # The models the recorded runs stored: a read-only copy is never trained into.
        specs = agent_specs(stored_tier(conn))
        if not args.what_if:
            print(replay_run(conn, args.run_id, specs).to_text())
            return 0
        _check_configs()
        resources = default_resources()
        config = resources["agents"].load()
        model = args.model or next(iter(config.agents.values())).model
        llm = resources["llm"].client(config, model)
        if llm is None and (args.model or args.prompt_version):
            raise RevorchError(
                "--what-if with another prompt or model needs an LLM "
                "endpoint (OPENAI_API_KEY or REVORCH_LLM_BASE_URL)"
            )
        print(
            what_if(conn, args.run_id, specs, prompt_version=args.prompt_version, llm=llm).to_text()
        )
    return 0


RUNS_SQL = (
    "SELECT run_id, count(*) AS decisions, max(decided_at) AS decided_at "
    "FROM agents.decisions GROUP BY run_id ORDER BY decided_at DESC"
)


def _check_run_recorded(conn: duckdb.DuckDBPyConnection, run_id: str) -> None:
    recorded = conn.execute(
        "SELECT count(*) FROM agents.decisions WHERE run_id = ?", [run_id]
    ).fetchone()[0]
    if not recorded:
        raise RevorchError(
            f"no run {run_id!r} has recorded decisions; list the runs that have with "
            f'revorch sql "{RUNS_SQL}"'
        )


def _approvals(args: argparse.Namespace) -> int:
    from revorch.governance.approvals import Review, ReviewError

    if args.verb == "list":
        with _reading() as conn:
            waiting = conn.execute(
                "SELECT action_id, action_type, entity_id, verdict_rules[-1], approval_due_at, "
                "escalated_at IS NOT NULL FROM governance.approval_queue"
            ).fetchall()
        print(f"{len(waiting)} actions wait for approval.")
        for action_id, action_type, entity_id, rule, due, escalated in waiting:
            late = "  ESCALATED" if escalated else ""
            print(
                f"{action_id}  {action_type:<22} {entity_id:<12} due {due:%Y-%m-%d %H:%M}  "
                f"{rule}{late}"
            )
        return 0
    review = {
        "action_ids": args.action_ids,
        "decision": args.verb,
        "reviewer": args.by,
        "comment": args.comment,
    }
    try:
        Review(**review).validate()
    except ReviewError as error:
        raise RevorchError(str(error)) from error
    # A review the state store refuses fails the run; its reason is printed below.
    _check_configs()
    ops = {"governance__approval_queue": {"config": review}}
    # An approval is dispatched in the same run, at once: not after the approvals sensor's next
    # tick and a run of its own (bench/README.md, "Live mode").
    job = "approve_and_dispatch" if args.verb == "approve" else "review_actions"
    result = _run_job(job, ops, log_level="CRITICAL", say_waiting=True)
    reviewed = any(
        e.asset_key.path == ["governance", "approval_queue"]
        for e in result.get_asset_materialization_events()
    )
    if not reviewed:
        print(f"revorch approvals: {_failure(result)}", file=sys.stderr)
        return 1
    count = len(set(args.action_ids))
    if args.verb == "reject":
        print(f"{count} actions rejected; they will never be sent.")
        return 0
    print(f"{count} actions approved.", flush=True)
    if not result.success:
        # They stay approved: the approvals sensor or `revorch dispatch` sends them later.
        print(f"revorch approvals: not dispatched yet: {_failure(result)}", file=sys.stderr)
        return 1
    return _print_dispatched(result)


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "release":
        return _release(args)
    if args.journal:
        raise RevorchError("--journal is for `revorch dispatch release --journal ID`")
    _check_configs()
    result = _run_job("dispatch_actions", {})
    if not result.success:
        print(f"revorch dispatch: {_failure(result)}", file=sys.stderr)
        return 1
    return _print_dispatched(result)


def _release(args: argparse.Namespace) -> int:
    """List the journals holding actions in ``sending``; with --journal, release one whose
    dispatcher is gone for good (revorch/governance/release.py)."""
    from revorch.governance.release import (
        ReleaseError,
        claims,
        journal_id_at,
        local_journal_idle,
        release_journal,
    )

    local = settings.dispatch_journal_path()
    if not args.journal:
        # The working file, not the published copy: a killed dispatcher published nothing.
        with _reading(working=True) as conn:
            found = claims(conn)
        print(f"{len(found)} dispatcher journals hold actions in `sending`.")
        here = journal_id_at(local)
        for claim in found:
            mine = f"  (this machine's journal, {local})" if claim.journal_id == here else ""
            print(
                f"{claim.journal_id}  {claim.actions:>7,} actions  sending since "
                f"{claim.since:%Y-%m-%d %H:%M} UTC{mine}"
            )
        if found:
            print(
                "A dispatcher at work holds its actions in `sending` too. Release only the "
                "journal of a dispatcher that is gone for good:\n"
                "  revorch dispatch release --journal ID --by NAME"
            )
        return 0
    try:
        with (
            local_journal_idle(local, args.journal),
            _writing() as conn,
        ):
            released = release_journal(
                conn,
                args.journal,
                by=args.by,
                run_id=None,
                anchor_path=settings.audit_anchor_path(),
            )
            head = conn.execute(
                "SELECT seq, hash FROM governance.audit_log ORDER BY seq DESC LIMIT 1"
            ).fetchone()
    except ReleaseError as refused:
        raise RevorchError(str(refused)) from refused
    if not released.action_ids:
        earlier = (
            f"; {released.earlier} were released by {released.earlier_by} at "
            f"{released.earlier_at:%Y-%m-%d %H:%M} UTC"
            if released.earlier
            else ""
        )
        print(f"Journal {args.journal} holds no action in `sending`: nothing to release{earlier}.")
        return 0
    _dagster_anchor()(*head)  # the new audit rows anchored where `audit verify` reads too
    print(
        f"Released {len(released.action_ids)} actions of journal {args.journal}: the next "
        "dispatch judges them again and sends them under their own idempotency keys."
    )
    return 0


@contextmanager
def _writing() -> Iterator[duckdb.DuckDBPyConnection]:
    """The state store for one short write outside a run: the file under its writer lock (as
    a run's StateStore opens it), or the DuckLake catalog; on the rule clock the runs read."""
    from resources import StateStore
    from revorch import clock
    from revorch.state import access

    setting = os.environ.get("REVORCH_CLOCK") or clock.WALL
    if access.is_lake():
        with access.lake_writing(setting) as conn:
            yield conn
        return
    database = settings.database_path()
    if not database.exists():
        raise RevorchError(
            f"no state store at {database} yet; run `revorch ingest` first (REVORCH_HOME)"
        )
    with StateStore(database=str(database), clock=setting).get_connection() as conn:
        yield conn


def _print_dispatched(result) -> int:
    """Print what the run's dispatch step did (sent, held, failed...)."""
    [materialization] = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key.path == ["governance", "dispatched_actions"]
    ]
    outcomes = {
        k: v.value for k, v in materialization.metadata.items() if k.startswith("dispatch/")
    }
    print(
        ", ".join(f"{k.removeprefix('dispatch/')} {v}" for k, v in outcomes.items())
        or "nothing due"
    )
    return 0


def _failure(result) -> str:
    """What made a run fail, in the words of the step that failed."""
    for event in result.all_events:
        if event.is_step_failure:
            return _step_error(event.step_failure_data)
    return "the run failed; see it in the Dagster UI"


def _audit(args: argparse.Namespace) -> int:
    import dagster as dg

    from orch_assets.governance.assets import dagster_anchors
    from revorch.governance.audit import read_checkpoint, verify, write_checkpoint
    from revorch.state.access import NoState, StateBusy, reading

    ensure_dagster_home()
    # The heads the runs recorded in Dagster's event log: anchors the writer does not rewrite.
    with dg.DagsterInstance.get() as instance:
        anchors = dagster_anchors(instance)
    # The working file, not the published copy: the anchors may be newer than the copy.
    anchor = settings.audit_anchor_path()
    since = read_checkpoint(anchor) if args.incremental else None
    try:
        with reading(working=True) as conn, _rows_progress("Verifying", args.progress) as shown:
            report = verify(conn, anchor, dagster_anchors=anchors, since=since, progress=shown)
    except NoState as error:
        raise RevorchError(f"{error}; nothing to verify") from error
    except StateBusy:
        print("revorch audit: a run is writing the state store; try again", file=sys.stderr)
        return 1
    write_checkpoint(anchor, report)
    checked = f"rows after {report.verified_from}" if report.verified_from else "every row"
    print(
        f"{report.rows:,} audit rows ({checked} recomputed), head {report.head_seq} "
        f"{report.head_hash[:16]}..., {report.anchors_checked} anchors checked, anchored up "
        f"to row {report.anchored_seq}"
    )
    for notice in report.notices:
        print(f"note: {notice}")
    if report.intact:
        print("The audit trail is intact.")
        return 0
    if report.problems:
        print("The audit trail has been tampered with:", *report.summary(), sep="\n  ")
    else:
        print("The audit trail is not proven:", *report.summary(), sep="\n  ")
    return 2


def _policy(args: argparse.Namespace) -> int:
    from revorch.governance.policy import PolicyError, load_policy
    from revorch.governance.policy_check import check

    path = settings.policy_path()
    try:
        policy = load_policy(path)
    except PolicyError as invalid:
        raise RevorchError(str(invalid)) from invalid
    report = check(policy)
    print(f"{path} (version {policy.version}, {policy.digest}): what a compromised model could")
    print("get dispatched without a person, for every (agent, action type) an agent proposes:")
    for pair in report.pairs:
        print(f"  {pair.line()}")
    print(_holdouts_line(policy.holdouts))
    for off in policy.holdouts.switched_off:
        print(f"Holdout switched off for {off.playbook} by {off.by}: {off.reason}")
    if report.passed:
        print("No customer-facing path carries model-written text without a person.")
        return 0
    for problem in report.problems:
        print(f"revorch policy check: {problem}", file=sys.stderr)
    return 2


def _holdouts_line(holdouts) -> str:
    """The holdout shares in force, one line (validated against the bounds at load)."""
    from revorch.governance.holdouts import PLAYBOOKS

    shares: dict[float, list[str]] = {}
    for playbook in sorted(PLAYBOOKS):
        shares.setdefault(holdouts.share(playbook), []).append(playbook)
    parts = [
        f"{share:.0%} of {len(names)} playbooks"
        if len(names) > 3
        else f"{share:.0%} of " + ", ".join(names)
        for share, names in sorted(shares.items(), reverse=True)
    ]
    return (
        f"Holdouts: {'; '.join(parts)} (at least {holdouts.minimum_share:.0%}, customer-facing "
        f"at most {holdouts.maximum_customer_facing_share:.0%}; read out after "
        f"{holdouts.horizon_days} days, final on {holdouts.analysis_date or 'no date set'})"
    )


def _history(args: argparse.Namespace) -> int:
    with _reading() as conn:
        conn.sql(
            "SELECT happened_at, kind, actor, entity_id, what, action_id "
            "FROM governance.company_history(?)",
            params=[args.company_id],
        ).show(max_rows=200, max_width=200)
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.name == "funnel":
        print(_report_text())
        return 0
    from datetime import UTC, datetime

    from revorch import clock
    from revorch.reports.weekly import ReportError, print_pdf, weekly_report_html
    from revorch.state.access import source

    with _reading() as conn:
        clock.bind(conn, os.environ.get("REVORCH_CLOCK") or clock.WALL)  # as the runs read it
        html = weekly_report_html(conn, source=source())
    out = (
        args.out
        or settings.revorch_home() / "reports" / f"weekly-{datetime.now(UTC):%Y-%m-%d}.html"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    print(f"Weekly report: {out}")
    if args.pdf:
        try:
            print(f"PDF: {print_pdf(out, out.with_suffix('.pdf'))}")
        except ReportError as error:
            raise RevorchError(str(error)) from error
    return 0


def _ui(args: argparse.Namespace) -> int:
    _check_configs()  # the daemon's runs would fail on them, later and less clearly
    ensure_dagster_home()
    os.environ.setdefault("REVORCH_HOME", str(settings.revorch_home()))
    dagster = Path(sys.executable).with_name("dagster")
    # The module, not workspace.yaml: an installed Revorch has no source tree to point at.
    command = [str(dagster), "dev", "-m", "revorch.definitions", "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}")
    os.execv(command[0], command)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from revorch.server.app import create_app, settings_from_environment
    from revorch.server.inbox import InboxSettings, inbox_routes

    config = settings_from_environment()
    try:
        inbox = InboxSettings.from_env()
        app = create_app(config, extra_routes=inbox_routes(inbox))
    except ValueError as invalid:
        raise RevorchError(f"{invalid}; fix the environment and start again") from invalid
    hubspot = "on" if config.hubspot_client_secret else "off (REVORCH_HUBSPOT_CLIENT_SECRET)"
    sources = ", ".join(sorted(config.source_secrets)) or "none (REVORCH_SOURCE_SECRET_<NAME>)"
    print(f"Landing webhooks in {config.landing}; HubSpot {hubspot}; other sources: {sources}")
    reviewers = ", ".join(sorted(inbox.tokens)) or "none yet (REVORCH_INBOX_TOKENS)"
    print(f"Approvals inbox at http://{args.host}:{args.port}/approvals; reviewers: {reviewers}")
    # uvicorn trusts X-Forwarded-* only from FORWARDED_ALLOW_IPS (default 127.0.0.1), the
    # reverse proxy that terminates TLS in front of it.
    options = {"host": args.host, "port": args.port, "access_log": args.access_log}
    if args.workers > 1:  # each worker process builds its own app from the environment
        service = "revorch.server.app:create_service"
        uvicorn.run(service, factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(app, **options)
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from revorch.mcp import server
    from revorch.mcp.config import McpConfigError, Tokens, load_mcp_config

    anchor = _dagster_anchor()
    try:
        config = load_mcp_config()
        if not args.http:
            # stdout is the protocol's: print nothing
            server.run_stdio(config, args.client, anchor)
            return 0
        tokens = Tokens.from_env(config)
    except McpConfigError as invalid:
        raise RevorchError(str(invalid)) from invalid
    clients = ", ".join(sorted(tokens.by_client)) or "none (set a client's token_env)"

    def ready(url: str) -> None:
        print(f"MCP endpoint at {url}; clients with a token: {clients}", flush=True)

    try:
        server.run_http(config, tokens, args.host, args.port, ready, anchor)
    except ValueError as invalid:
        raise RevorchError(str(invalid)) from invalid
    return 0


def _dagster_anchor():
    """Records the audit trail's head after an MCP call as an observation of
    ``governance/audit_trail`` in the Dagster instance, where `revorch audit verify` reads the
    runs' anchors: rows the server wrote are then anchored without waiting for a run."""
    import dagster as dg

    from orch_assets.governance.assets import record_anchor

    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    return lambda seq, head: record_anchor(instance, seq, head)


if __name__ == "__main__":
    sys.exit(main())
