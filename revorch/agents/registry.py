"""Every agent: its output schema, its inputs from the state store, its offline decision."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import duckdb

from revorch.agents import incremental
from revorch.agents import offline as offline_inputs
from revorch.agents.config import AgentsConfig, AgentSettings
from revorch.agents.features import ModelsConfig
from revorch.agents.llm import LlmClient
from revorch.agents.offline import OfflineTier
from revorch.agents.runtime import AgentSpec, Bulk, Connect, RunReport, run_agent
from revorch.agents.schemas import (
    DealRisk,
    LeadQualification,
    OnboardingPlan,
    RenewalRisk,
    TicketTriage,
)
from revorch.lifecycle.config import LifecycleConfig
from revorch.state.scratch import scratch_folder

OUTPUTS = {
    "lead_qualification": LeadQualification,
    "deal_risk": DealRisk,
    "ticket_triage": TicketTriage,
    "renewal_risk": RenewalRisk,
    "onboarding_plan": OnboardingPlan,
}

INPUTS: dict[str, Callable[[duckdb.DuckDBPyConnection], list[dict]]] = {
    "lead_qualification": offline_inputs.lead_inputs,
    "deal_risk": offline_inputs.deal_inputs,
    "ticket_triage": offline_inputs.ticket_inputs,
    "renewal_risk": offline_inputs.renewal_inputs,
    "onboarding_plan": offline_inputs.onboarding_inputs,
}


def agent_specs(tier: OfflineTier) -> dict[str, AgentSpec]:
    return {
        name: AgentSpec(
            name=name,
            output_model=output,
            offline=Bulk(tier.lead_qualification, tier.lead_qualifications)
            if name == "lead_qualification"
            else getattr(tier, name),
            offline_version=tier.model_version(name),
        )
        for name, output in OUTPUTS.items()
    }


# Deciding every open lead (a first run, a full rebuild, a new version), or many touched ones,
# the ids are read this many at a time, each slice decided and recorded before the next is
# read, so no more than a slice's inputs and decisions are held in Python (about 700,000 open
# leads at a million contacts), as proposals read them (revorch/governance/open_items.py).
# Each slice reads the change log and the activities again: at 1M on an idle machine, slices
# of 100,000 ids peaked at 1,702 MB for 9 CPU s more than one piece (5,964 MB), and the same
# wall time (bench/README.md).
SLICE_IDS = 100_000
# For an agent whose every item is read in slices: a superset of its items' ids (its reader
# keeps the open ones).
ALL_IDS = {
    "lead_qualification": "SELECT DISTINCT entity_id FROM stages.entity_stages "
    "WHERE entity_type = 'contact' ORDER BY entity_id",
}
# How such an agent writes its items' inputs, a file per pass, for its reader to take slices of
# (``staged=``): read from the tables, each slice would scan them again. A pass covers this
# many slices (a million leads): all of them at once ran out of DuckDB's memory limit at 10M.
# The passes read their own rows of the tables, spread over them in one scan.
STAGES = {"lead_qualification": offline_inputs.stage_lead_inputs}
STAGE_SLICES = 10


def inputs_to_decide(
    conn: duckdb.DuckDBPyConnection,
    spec: AgentSpec,
    settings: AgentSettings,
    lifecycle: LifecycleConfig,
    *,
    full_rebuild: bool = False,
    models: ModelsConfig | None = None,
) -> tuple[list[dict], incremental.Scope]:
    """The inputs of the items this run must decide: every open item, or only those touched
    since the agent's watermark (``incremental.plan``), with the scope to record.
    ``models``: the declared features and outcomes (config/agents.yaml ``models:``)."""
    models = models or ModelsConfig()
    scope = _plan(conn, spec, settings, lifecycle, full_rebuild, models)
    if scope.ids == []:
        return [], scope
    return reader(spec.name, lifecycle, models)(conn, scope.ids), scope


def decide_in_slices(
    connect: Connect,
    spec: AgentSpec,
    config: AgentsConfig,
    lifecycle: LifecycleConfig,
    *,
    llm: LlmClient | None,
    run_id: str | None,
    full_rebuild: bool = False,
    models: ModelsConfig | None = None,
    slice_ids: int = SLICE_IDS,
) -> tuple[RunReport, incremental.Scope]:
    """One run of an agent, as :func:`inputs_to_decide` then ``run_agent`` would make it in one
    piece, but ``slice_ids`` items at a time: each slice is read, decided and recorded before
    the next (``connect`` opens a short connection each time). The watermark is recorded with
    the last slice, so a run that dies part-way is planned again whole, and the slices it
    recorded are memo hits. One report for the run; the run's budget holds over all slices."""
    settings = config.agents[spec.name]
    models = models or ModelsConfig()
    key = incremental.inputs_key(lifecycle.model_dump_json(), models.model_dump_json())
    report = RunReport(spec.name)
    with ExitStack() as staged:
        with connect() as conn:
            scope = _plan(conn, spec, settings, lifecycle, full_rebuild, models)
            # No id: one empty slice, which records the watermark.
            slices = id_slices(conn, spec.name, scope.ids, slice_ids) or [[]]
            read = staged.enter_context(
                slice_reader(conn, spec.name, lifecycle, models, scope.ids, slices)
            )
        for number, ids in enumerate(slices, 1):
            items: list[dict] = []
            if ids != []:
                with connect() as conn:
                    items = read(conn, ids)
            run_agent(
                connect,
                spec,
                config,
                items,
                llm=llm,
                run_id=run_id,
                settings=settings,
                seen=scope.seen if number == len(slices) else None,
                report=report,
                # The items' input hashes, which the proposals take instead of reading them
                # again: every one replaced from the first slice when every item is read.
                read=incremental.ItemsRead(None if scope.ids is None and number == 1 else ids, key),
            )
    return report, scope


def _plan(
    conn: duckdb.DuckDBPyConnection,
    spec: AgentSpec,
    settings: AgentSettings,
    lifecycle: LifecycleConfig,
    full_rebuild: bool,
    models: ModelsConfig,
) -> incremental.Scope:
    version = incremental.version_key(
        spec.offline_version,
        settings.prompt_version,
        settings.model,
        lifecycle.model_dump_json(),
        models.model_dump_json(),
    )
    return incremental.plan(
        conn,
        spec.name,
        version,
        full_rebuild=full_rebuild,
        renewal_window_days=lifecycle.accounts.renewal_window_days,
        clock=input_clock(spec.name, models),
    )


def input_options(agent: str, lifecycle: LifecycleConfig, models: ModelsConfig) -> dict:
    """What an agent's inputs read besides the state store: the run's snapshot of the
    lifecycle config (the renewal window) and the declared features (config/agents.yaml
    ``models:``). The proposals read the inputs with the same (revorch/governance/open_items.py):
    an input read otherwise hashes otherwise, and its decision would propose nothing."""
    options: dict = {"config": lifecycle} if agent == "renewal_risk" else {}
    if agent in ("lead_qualification", "deal_risk", "renewal_risk"):
        options["models"] = models
    return options


def reader(
    agent: str, lifecycle: LifecycleConfig, models: ModelsConfig
) -> Callable[[duckdb.DuckDBPyConnection, list[str] | None], list[dict]]:
    """The agent's inputs for some ids (None: every open item)."""
    options = input_options(agent, lifecycle, models)
    return lambda conn, ids: INPUTS[agent](conn, ids, **options)


@contextmanager
def slice_reader(
    conn: duckdb.DuckDBPyConnection,
    agent: str,
    lifecycle: LifecycleConfig,
    models: ModelsConfig,
    ids: list[str] | None,
    slices: list[list[str] | None],
) -> Iterator[Callable[[duckdb.DuckDBPyConnection, list[str] | None], list[dict]]]:
    """The agent's reader for ``slices`` of ``ids`` (``id_slices``), read in their order.
    When every item is read (None) in more than one slice by an agent with a stage
    (``STAGES``), the inputs of every ``STAGE_SLICES`` slices (a pass) are first written to a
    file beside DuckDB's spill files, removed at the end, and each slice reads its own."""
    plain = reader(agent, lifecycle, models)
    if ids is not None or len(slices) < 2 or agent not in STAGES:
        yield plain
        return
    options = input_options(agent, lifecycle, models)
    first = {some[0]: number for number, some in enumerate(slices) if some}
    with scratch_folder(conn, f"revorch-{agent}-") as folder:
        passes = [
            [i for part in slices[start : start + STAGE_SLICES] for i in part]
            for start in range(0, len(slices), STAGE_SLICES)
        ]
        staged = STAGES[agent](conn, folder, passes, **options)

        def read(conn: duckdb.DuckDBPyConnection, some: list[str] | None) -> list[dict]:
            number = first.get(some[0]) if some else None
            if number is None:
                return plain(conn, some)
            path = staged[number // STAGE_SLICES]
            if path is None:
                return []  # no open item in these slices
            return INPUTS[agent](conn, some, staged=str(path), **options)

        yield read


def id_slices(
    conn: duckdb.DuckDBPyConnection, agent: str, ids: list[str] | None, size: int
) -> list[list[str] | None]:
    """The ids to read, ``size`` at a time: ``ids``, or for every item (None) a superset of
    the agent's items (``ALL_IDS``); ``[None]`` (every item at once) for an agent without one."""
    if ids is None and agent not in ALL_IDS:
        return [None]
    if ids is None:
        ids = [entity_id for (entity_id,) in conn.execute(ALL_IDS[agent]).fetchall()]
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def input_clock(agent: str, models: ModelsConfig) -> str | None:
    """How a lead's inputs read the clock, when its declaration makes them: a stale flag or
    a day count moves with the week, a window ending at the scoring point with any move."""
    if agent != "lead_qualification":
        return None
    lead = models.lead
    if any(
        f.activities is not None and f.activities.start == "scoring_point" and f.activities.days
        for f in lead.features
    ):
        return "instant"
    dated = any(f.derived for f in lead.features) or any(
        f.property and models.feature_types("lead")[f.name] in ("date", "timestamp")
        for f in lead.features
    )
    return "week" if dated or lead.stale_after_days else None
