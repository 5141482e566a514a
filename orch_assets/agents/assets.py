"""One asset per agent. Each reads its stage's records, decides for the new or changed ones
(offline tier first, the LLM tier for the uncertain or valuable ones), and records every
decision with its cost. Agents only propose: nothing here reaches a CRM or a customer.

The agents run outside the ``duckdb_writer`` pool: they read, close the state store while the
model answers, and write in a short transaction (``run_agent``), so ingestion goes on meanwhile.
"""

import dagster as dg

from orch_assets.ingestion.assets import DUCKDB_WRITER_POOL, RebuildConfig
from resources import LifecycleConfigResource, StateStore
from resources.agents import AgentsConfigResource, LlmResource
from revorch.agents.models import offline_tier, outcome_counts, train_and_store
from revorch.agents.registry import agent_specs, decide_in_slices

UPSTREAM = {
    "lead_qualification": [["stages", "leads"], ["stages", "mqls"], ["stages", "sqls"]],
    "deal_risk": [["stages", "opportunities"]],
    "ticket_triage": [["crm", "tickets"]],
    "renewal_risk": [["stages", "renewals"]],
    "onboarding_plan": [["stages", "onboarding"]],
}

DESCRIPTIONS = {
    "lead_qualification": "Fit and intent of every open lead, with its next action.",
    "deal_risk": "Loss risk of every open new-business deal, with its next action.",
    "ticket_triage": "Intent, severity, churn signal and sentiment of every open ticket.",
    "renewal_risk": "Churn risk of every subscription in its renewal window.",
    "onboarding_plan": "An onboarding plan for every new customer still onboarding.",
}


OFFLINE_MODELS = dg.AssetKey(["agents", "offline_models"])
# What the offline models learn from: every agent runs after it, so a model trained on demand
# sees the whole history.
HISTORY = [
    dg.AssetKey(["stages", "contact_lifecycle"]),
    dg.AssetKey(["stages", "account_lifecycle"]),
    dg.AssetKey(["stages", "adoption_health"]),
]


@dg.asset(
    key=OFFLINE_MODELS,
    deps=HISTORY,
    group_name="agents",
    kinds={"duckdb", "sklearn"},
    pool=DUCKDB_WRITER_POOL,
    # Once a day, after the history it learns from changed since 05:00 UTC: with no new
    # history there is nothing new to learn (revorch_main leaves it out).
    automation_condition=dg.AutomationCondition.on_cron("0 5 * * *"),
)
def offline_models(
    context: dg.AssetExecutionContext,
    state_store: StateStore,
    lifecycle: LifecycleConfigResource,
    agents: AgentsConfigResource,
):
    """The offline tier's models (lead, deal, renewal), trained on the history in DuckDB with
    the features and outcomes config/agents.yaml declares (``models:``), calibrated on its
    newest part (``scoring:``) and kept by version. Retrained once a day (on_cron); the agents
    use the newest. The metadata counts, per model, the positives its outcome kept, the
    examples it dropped and the late positives it called negative, and warns when fewer than
    about 100 positives remain."""
    settings = agents.load()
    with state_store.get_connection() as conn:
        tier = train_and_store(
            conn, config=lifecycle.load(), models=settings.models, scoring=settings.scoring
        )
    for agent, why in tier.untrained.items():
        context.log.warning(f"{agent}: no model, rules decide ({why})")
    metadata: dict[str, object] = {
        agent: tier.model_version(agent)
        for agent in ("lead_qualification", "deal_risk", "renewal_risk")
    }
    for kind, model in (
        ("lead", tier.lead_model),
        ("deal", tier.deal_model),
        ("renewal", tier.renewal_model),
    ):
        counts = outcome_counts(model)
        if counts is None:
            continue
        metadata |= counts.as_metadata(f"{kind}/outcome")
        if counts.warning:
            metadata[f"{kind}/outcome/warning"] = counts.warning
            context.log.warning(f"{kind} model: {counts.warning}")
    return dg.MaterializeResult(metadata=metadata)


def agent_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["agents", name],
        deps=[OFFLINE_MODELS, *HISTORY, *(dg.AssetKey(key) for key in UPSTREAM[name])],
        description=DESCRIPTIONS[name],
        group_name="agents",
        kinds={"duckdb", "openai"},
        # Not in the writer pool: the step holds the state store only for its short reads and
        # its final write (run_agent), never while the model answers.
        automation_condition=dg.AutomationCondition.eager(),
    )
    def _agent(
        context: dg.AssetExecutionContext,
        config: RebuildConfig,
        state_store: StateStore,
        agents: AgentsConfigResource,
        llm: LlmResource,
        lifecycle: LifecycleConfigResource,
    ):
        settings = agents.load()
        stages = lifecycle.load()
        with state_store.get_connection() as conn:
            tier = offline_tier(
                conn, config=stages, models=settings.models, scoring=settings.scoring
            )
        # Only the items touched since the last run, unless a full rebuild is asked; many
        # (every open lead on a first run) in slices, each read, decided and recorded in turn.
        report, scope = decide_in_slices(
            state_store.get_connection,
            agent_specs(tier)[name],
            settings,
            stages,
            llm=llm.client(settings, settings.agents[name].model),
            run_id=context.run_id,
            full_rebuild=config.full_rebuild,
            models=settings.models,
        )
        context.log.info(f"{name} ({scope.why}): {report.as_metadata()}")
        return dg.MaterializeResult(
            metadata={**report.as_metadata(), "inputs_scope": scope.why, "llm_tier": llm.tier}
        )

    return _agent


agent_assets = [agent_asset(name) for name in UPSTREAM]
