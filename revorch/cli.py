"""The `revorch` command: the operations that are not Dagster's own.

revorch quickstart            simulate a CRM, run the main job, print the funnel
revorch simulate [--live]     write simulated CRM changes into the landing zone
revorch import FILE           put a file of change events into the landing zone
revorch ingest                run the main job (ingest waiting batches, refresh assets)
revorch report funnel         print the funnel summary
revorch approvals [list]      actions waiting for a person
revorch approvals approve|reject ID... --by NAME [--comment TEXT]
revorch dispatch              send approved and allowed actions now
revorch audit verify          recompute the audit trail's hash chain against its anchors
revorch history COMPANY_ID    every decision and action about one company, in order
revorch ui                    start the Dagster UI (dagster dev) on this project
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import duckdb

from revorch import settings
from revorch.instance import ensure_dagster_home
from revorch.landing import LandingZone
from revorch.reports.funnel import funnel_summary

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revorch", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

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
    sim.set_defaults(handler=_simulate)

    imp = commands.add_parser("import", help="put a file of change events into the landing zone")
    imp.add_argument("file", type=Path, help="newline-delimited JSON, one event per line")
    imp.add_argument("--source", default="import", help="source name recorded with the batch")
    imp.set_defaults(handler=_import)

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
    sql.set_defaults(handler=_sql)

    backtest = commands.add_parser(
        "backtest", help="train the lead scorer on the past, test it on a later period"
    )
    backtest.add_argument("--split", help="first day of the test period (YYYY-MM-DD)")
    backtest.set_defaults(handler=_backtest)

    replay = commands.add_parser("replay", help="replay a run's agent decisions from the record")
    replay.add_argument("run_id")
    replay.add_argument("--what-if", action="store_true", help="ask again and report changes")
    replay.add_argument("--prompt-version", help="with --what-if: another prompt version")
    replay.add_argument("--model", help="with --what-if: another model (needs an LLM endpoint)")
    replay.set_defaults(handler=_replay)

    report = commands.add_parser("report", help="print a report")
    report.add_argument("name", choices=["funnel"])
    report.set_defaults(handler=_report)

    approvals = commands.add_parser("approvals", help="list, approve or reject waiting actions")
    approvals.add_argument("verb", nargs="?", default="list", choices=["list", "approve", "reject"])
    approvals.add_argument("action_ids", nargs="*", metavar="ACTION_ID")
    approvals.add_argument("--by", default=os.environ.get("USER", ""), help="who decides")
    approvals.add_argument("--comment", default="", help="why (required to reject)")
    approvals.set_defaults(handler=_approvals)

    dispatch = commands.add_parser("dispatch", help="send approved and allowed actions now")
    dispatch.set_defaults(handler=_dispatch)

    audit = commands.add_parser("audit", help="check the audit trail")
    audit.add_argument("verb", choices=["verify"])
    audit.set_defaults(handler=_audit)

    history = commands.add_parser("history", help="every decision and action about a company")
    history.add_argument("company_id")
    history.set_defaults(handler=_history)

    ui = commands.add_parser("ui", help="start the Dagster UI (dagster dev)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=_ui)
    return parser


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
    summary = simulate_history(zone, config)
    print(f"Wrote {summary.events:,} events in {summary.batches} batches to {zone.incoming_dir}")
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


def _import(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"revorch import: no such file: {args.file}", file=sys.stderr)
        return 2
    zone = _zone()
    with zone.open_batch(args.source) as tmp:
        shutil.copyfile(args.file, tmp)
    print(f"Landed {args.file} as a batch in {zone.incoming_dir}; run `revorch ingest` to load it")
    return 0


FULL_REBUILD_STEPS = ("crm_current_state", "stages__contact_lifecycle", "stages__account_lifecycle")


def _run_main_job(*, full_rebuild: bool = False) -> bool:
    ops = {step: {"config": {"full_rebuild": True}} for step in FULL_REBUILD_STEPS}
    return _run_job("revorch_main", ops if full_rebuild else {}).success


def _run_job(name: str, ops: dict, *, log_level: str = "WARNING"):
    """Run one of Revorch's jobs in this process, recorded in the project's instance."""
    import dagster as dg

    ensure_dagster_home()
    from revorch.definitions import defs
    from revorch.instance.recovery import in_process_run_tags, recover_abandoned_runs

    # The terminal gets warnings only; every event is still in the run's log in the UI.
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if ops:
        run_config["ops"] = ops
    with dg.DagsterInstance.get() as instance:
        # A run killed earlier would hold the duckdb_writer slot and block this one forever.
        for recovered in recover_abandoned_runs(instance):
            print(recovered, flush=True)
        return defs.resolve_job_def(name).execute_in_process(
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
            tags=in_process_run_tags(),
        )


def _ingest(args: argparse.Namespace) -> int:
    ok = _run_main_job()
    print(_report_text() if ok else "The main job failed; see the run in the Dagster UI.")
    return 0 if ok else 1


def _rebuild(args: argparse.Namespace) -> int:
    ok = _run_main_job(full_rebuild=True)
    print(_report_text() if ok else "The rebuild failed; see the run in the Dagster UI.")
    return 0 if ok else 1


def _quickstart(args: argparse.Namespace) -> int:
    from revorch.simulator import SimulationConfig, simulate_history

    zone = _zone()
    summary = simulate_history(zone, SimulationConfig(contacts=args.contacts, seed=args.seed))
    print(f"Simulated a CRM: {summary.events:,} change events in {summary.batches} batches.")
    if not _run_main_job():
        print("The main job failed; see the run in the Dagster UI.", file=sys.stderr)
        return 1
    print()
    print(_report_text())
    print()
    with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
        decided = conn.execute(
            "SELECT agent, tier, count(*), sum(cost_usd) FROM agents.decisions "
            "GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        actions = dict(
            conn.execute("SELECT status, count(*) FROM governance.actions GROUP BY ALL").fetchall()
        )
    print("Agent decisions:   " + ", ".join(f"{a} {n:,} {t}" for a, t, n, _ in decided))
    print(
        f"Actions:           {actions.get('sent', 0):,} sent to {settings.outbox_path()}, "
        f"{actions.get('pending_approval', 0):,} wait for approval (revorch approvals), "
        f"{actions.get('forbidden', 0):,} forbidden by the policy"
    )
    print()
    print(f"DuckDB state store: {settings.database_path()}")
    print(f"  analysts' copy:    {settings.published_path()} (refreshed after every run)")
    print('  query it:          .venv/bin/revorch sql "SELECT * FROM contacts LIMIT 5"')
    print("Dagster UI:          .venv/bin/revorch ui   then open http://127.0.0.1:3000")
    return 0


def _analyst_database() -> Path:
    """The published copy when there is one: it can be read while a run writes."""
    published = settings.published_path()
    return published if published.exists() else settings.database_path()


def _report_text() -> str:
    with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
        return funnel_summary(conn)


def _sql(args: argparse.Namespace) -> int:
    with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
        try:
            conn.sql(args.query).show(max_rows=100)
        except duckdb.Error as error:
            print(f"revorch sql: {error}", file=sys.stderr)
            return 1
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from revorch.agents.backtest import backtest_lead_scorer

    with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
        print(backtest_lead_scorer(conn, split=args.split).to_text())
    return 0


def _replay(args: argparse.Namespace) -> int:
    from resources import default_resources
    from revorch.agents.models import offline_tier
    from revorch.agents.registry import agent_specs
    from revorch.agents.replay import replay_run, what_if

    with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
        specs = agent_specs(offline_tier(conn))
        if not args.what_if:
            print(replay_run(conn, args.run_id, specs).to_text())
            return 0
        resources = default_resources()
        config = resources["agents"].load()
        model = args.model or next(iter(config.agents.values())).model
        llm = resources["llm"].client(config, model)
        if llm is None and (args.model or args.prompt_version):
            print(
                "revorch replay: --what-if with another prompt or model needs an LLM "
                "endpoint (OPENAI_API_KEY or REVORCH_LLM_BASE_URL)",
                file=sys.stderr,
            )
            return 2
        print(
            what_if(conn, args.run_id, specs, prompt_version=args.prompt_version, llm=llm).to_text()
        )
    return 0


def _approvals(args: argparse.Namespace) -> int:
    from revorch.governance.approvals import Review, ReviewError

    if args.verb == "list":
        with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
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
        print(f"revorch approvals: {error}", file=sys.stderr)
        return 2
    # A review the state store refuses fails the run; its reason is printed below.
    ops = {"governance__approval_queue": {"config": review}}
    result = _run_job("review_actions", ops, log_level="CRITICAL")
    if not result.success:
        print(f"revorch approvals: {_failure(result)}", file=sys.stderr)
        return 1
    done = (
        "approved; `revorch dispatch` (or the approvals sensor) sends them"
        if (args.verb == "approve")
        else "rejected; they will never be sent"
    )
    print(f"{len(set(args.action_ids))} actions {done}.")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    result = _run_job("dispatch_actions", {})
    if not result.success:
        print(f"revorch dispatch: {_failure(result)}", file=sys.stderr)
        return 1
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
        if event.is_step_failure and event.step_failure_data.user_failure_data:
            return event.step_failure_data.user_failure_data.description
        if event.is_step_failure:
            return event.step_failure_data.error.message.strip()
    return "the run failed; see it in the Dagster UI"


def _audit(args: argparse.Namespace) -> int:
    from revorch.governance.audit import verify

    # The working file, not the published copy: the anchors may be newer than the copy.
    try:
        conn = duckdb.connect(str(settings.database_path()), read_only=True)
    except duckdb.IOException:
        print("revorch audit: a run is writing the state store; try again", file=sys.stderr)
        return 1
    with conn:
        report = verify(conn, settings.audit_anchor_path())
    print(
        f"{report.rows:,} audit rows, head {report.head_seq} {report.head_hash[:16]}..., "
        f"{report.anchors_checked} anchors checked"
    )
    if report.intact:
        print("The audit trail is intact.")
        return 0
    print("The audit trail has been tampered with:", *report.problems, sep="\n  ")
    return 2


def _history(args: argparse.Namespace) -> int:
    with duckdb.connect(str(_analyst_database()), read_only=True) as conn:
        conn.sql(
            "SELECT happened_at, kind, actor, entity_id, what, action_id "
            "FROM governance.company_history(?)",
            params=[args.company_id],
        ).show(max_rows=200, max_width=200)
    return 0


def _report(args: argparse.Namespace) -> int:
    print(_report_text())
    return 0


def _ui(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    os.environ.setdefault("REVORCH_HOME", str(settings.revorch_home()))
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}")
    os.chdir(REPO_ROOT)
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
