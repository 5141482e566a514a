"""Profile one run of a job as a run worker makes it: a new process imports the definitions,
then runs the job on $DAGSTER_HOME's instance ($REVORCH_HOME's state store).

    .venv/bin/python bench/profile_run.py live_ingest --land 3 --out ingest.prof
    .venv/bin/python bench/profile_run.py review_actions --out review.prof
    .venv/bin/python bench/profile_run.py dispatch_actions --out dispatch.prof

``--land N`` first lands N live batches of 200 simulated changes (1,000 contacts);
``review_actions`` approves the first action waiting in the published copy. Prints the CPU
seconds of the imports and of the run; ``--out`` keeps a cProfile (CPU clock) for pstats.
"""

from __future__ import annotations

import argparse
import cProfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job")
    parser.add_argument("--land", type=int, default=0)
    parser.add_argument("--out", help="write the profile here (none: no profiler)")
    args = parser.parse_args()
    profile = cProfile.Profile(time.process_time) if args.out else None
    if profile:
        profile.enable()
    started = time.process_time()
    import dagster as dg

    from revorch import settings
    from revorch.definitions import defs

    imported = time.process_time()
    if args.land:
        from revorch.landing import LandingZone
        from revorch.simulator import SimulationConfig, stream_live

        zone = LandingZone(settings.landing_path()).ensure()
        config = SimulationConfig(contacts=1_000, seed=int(time.time()) % 1_000)
        list(
            stream_live(
                zone, config, events_per_batch=200, interval_seconds=0, max_batches=args.land
            )
        )
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if args.job == "review_actions":
        import duckdb

        with duckdb.connect(str(settings.published_path()), read_only=True) as conn:
            action = conn.execute("SELECT action_id FROM governance.approval_queue").fetchone()[0]
        review = {"action_ids": [action], "decision": "approve", "reviewer": "bench"}
        run_config["ops"] = {"governance__approval_queue": {"config": review}}
    landed, wall = time.process_time(), time.time()
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(args.job).execute_in_process(
            instance=instance, run_config=run_config
        )
    done = time.process_time()
    if profile:
        profile.disable()
        profile.dump_stats(args.out)
    print(
        f"{args.job}: imports {imported - started:.2f} s CPU, run {done - landed:.2f} s CPU "
        f"({time.time() - wall:.1f} s wall), {len(result.get_step_success_events())} steps"
    )


if __name__ == "__main__":
    main()
