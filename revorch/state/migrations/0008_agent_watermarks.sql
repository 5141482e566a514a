-- Revorch state store, version 8: how far each agent has seen, so a run builds inputs only
-- for the items whose facts changed since. Written in the same transaction as the agent's
-- decisions, so a run that dies before recording sees the same changes again next time.
CREATE TABLE agents.watermarks (
    agent        VARCHAR PRIMARY KEY,
    load_id      BIGINT NOT NULL,        -- change_log loads seen (and folded into the stages)
    as_of        TIMESTAMPTZ,            -- the rule clock when the run read its inputs
    version_key  VARCHAR NOT NULL,       -- inputs, offline model, prompt, model and config
    updated_at   TIMESTAMPTZ NOT NULL
);
