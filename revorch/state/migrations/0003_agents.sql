-- Revorch state store, version 3: every agent decision, what it cost, and the offline models.
CREATE SCHEMA agents;

-- One row per decision taken. A later run with the same input re-uses it (the memo) and writes nothing.
-- Keyed for the memo by (agent, prompt_version, model, input_hash).
CREATE TABLE agents.decisions (
    decision_id     VARCHAR NOT NULL,     -- hash of (agent, prompt_version, model, input_hash)
    agent           VARCHAR NOT NULL,
    prompt_version  VARCHAR NOT NULL,
    model           VARCHAR NOT NULL,     -- the LLM that answered, or the offline model version
    input_hash      VARCHAR NOT NULL,     -- sha256 of the canonical JSON of the input
    entity_id       VARCHAR NOT NULL,
    tier            VARCHAR NOT NULL,     -- offline or llm
    fallback_reason VARCHAR,              -- why an item meant for the LLM was decided offline
    input           JSON NOT NULL,
    prompt          JSON,                 -- the messages as sent (after redaction), LLM tier only
    output          JSON NOT NULL,        -- validated against the agent's schema
    raw_output      VARCHAR,
    prompt_tokens   BIGINT NOT NULL,
    cached_tokens   BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd        DOUBLE NOT NULL,
    latency_ms      DOUBLE NOT NULL,
    attempts        INTEGER NOT NULL,
    run_id          VARCHAR,
    decided_at      TIMESTAMPTZ NOT NULL
);

-- Money and tokens per agent, model and run (one row per agent and run that called a model).
CREATE TABLE agents.cost_ledger (
    run_id            VARCHAR,
    agent             VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    day               DATE NOT NULL,
    calls             BIGINT NOT NULL,
    failed_calls      BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd          DOUBLE NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL
);

-- Trained offline models, by content version.
CREATE TABLE agents.models (
    version    VARCHAR NOT NULL,
    kind       VARCHAR NOT NULL,
    trained_at TIMESTAMPTZ NOT NULL,
    model      JSON NOT NULL
);

-- The newest decision for every agent and entity.
CREATE VIEW agents.latest_decisions AS
SELECT * FROM agents.decisions
QUALIFY row_number() OVER (PARTITION BY agent, entity_id ORDER BY decided_at DESC, decision_id) = 1;

-- Cost per agent and day.
CREATE VIEW agents.cost_by_day AS
SELECT day, agent, model, sum(calls) AS calls, sum(prompt_tokens) AS prompt_tokens,
       sum(cached_tokens) AS cached_tokens, sum(completion_tokens) AS completion_tokens,
       sum(cost_usd) AS cost_usd
FROM agents.cost_ledger GROUP BY ALL;
