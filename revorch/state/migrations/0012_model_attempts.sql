-- Revorch state store, version 12: offline models the history was too short for. An agent
-- run that finds a model missing tries to train it once per clock day and declaration
-- (revorch/agents/models.py); later runs that day read the reason here instead of training
-- again.
CREATE TABLE agents.model_attempts (
    kind       VARCHAR NOT NULL,     -- lead, deal or renewal
    definition VARCHAR NOT NULL,     -- the declared features and outcome's key
    tried_on   DATE NOT NULL,        -- clock date of the attempt
    tried_at   TIMESTAMPTZ NOT NULL,
    error      VARCHAR NOT NULL,     -- why the history could not train it
    PRIMARY KEY (kind, definition)
);
