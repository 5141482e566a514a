-- Revorch state store, version 2: where every contact and account stands in the lifecycle,
-- how it got there, and the moves the state machine refused.
CREATE SCHEMA stages;
CREATE SCHEMA handoffs;

-- The current stage of every contact ('contact') and customer account ('company').
CREATE TABLE stages.entity_stages (
    entity_type  VARCHAR NOT NULL,      -- contact or company
    entity_id    VARCHAR NOT NULL,
    stage        VARCHAR NOT NULL,
    entered_at   TIMESTAMPTZ NOT NULL,  -- when the move into this stage happened
    decided_by   VARCHAR NOT NULL,      -- rule, human (set in the CRM) or agent
    rule         VARCHAR NOT NULL,      -- the rule, or the CRM field, that moved it
    reason       VARCHAR,
    event_id     VARCHAR                -- the change that triggered the move
);

-- Every move between stages, in order, per entity. Derived from the change log by the state
-- machine: a full rebuild gives the same rows as the incremental runs.
CREATE TABLE stages.stage_transitions (
    entity_type     VARCHAR NOT NULL,
    entity_id       VARCHAR NOT NULL,
    seq             INTEGER NOT NULL,   -- 1 for the entity's first stage
    from_stage      VARCHAR NOT NULL,   -- 'new' for the first stage
    to_stage        VARCHAR NOT NULL,
    transitioned_at TIMESTAMPTZ NOT NULL,
    decided_by      VARCHAR NOT NULL,
    rule            VARCHAR NOT NULL,
    reason          VARCHAR,
    event_id        VARCHAR
);

-- Moves that were asked for (for example by a CRM field) but that the state machine forbids.
-- They are never applied; the entity stays where it was.
CREATE TABLE stages.forbidden_transitions (
    entity_type   VARCHAR NOT NULL,
    entity_id     VARCHAR NOT NULL,
    from_stage    VARCHAR NOT NULL,
    to_stage      VARCHAR NOT NULL,
    attempted_at  TIMESTAMPTZ NOT NULL,
    decided_by    VARCHAR NOT NULL,
    rule          VARCHAR NOT NULL,
    reason        VARCHAR,
    event_id      VARCHAR
);

-- Onboarding started by every won new-business deal, with its owner and tasks.
CREATE TABLE stages.onboarding (
    onboarding_id  VARCHAR NOT NULL,    -- the won deal's id
    company_id     VARCHAR,
    deal_id        VARCHAR NOT NULL,
    owner_id       VARCHAR,             -- the CSM who runs it
    started_at     TIMESTAMPTZ NOT NULL,
    due_at         TIMESTAMPTZ NOT NULL,
    tasks          JSON NOT NULL,       -- [{"task": ..., "due_at": ...}, ...]
    activated_at   TIMESTAMPTZ          -- when seat use first reached the activation level
);

-- The data clock each derived table last ran at, for rules that fire when time passes.
ALTER TABLE state_watermarks ADD COLUMN as_of TIMESTAMPTZ;

-- "Now" for the lifecycle: the newest change received, so a replayed history answers alike.
CREATE MACRO data_clock() AS (SELECT max(occurred_at) FROM change_log);

-- Contacts currently in one lifecycle stage, with who put them there and since when.
CREATE MACRO contacts_in_stage(stage_name) AS TABLE
SELECT s.entity_id AS contact_id, c.first_name, c.last_name, c.email, c.company_id, c.owner_id,
       c.lead_source, s.entered_at, date_diff('day', s.entered_at, data_clock()) AS days_in_stage,
       s.decided_by, s.rule, s.reason
FROM stages.entity_stages AS s
JOIN contacts AS c ON c.id = s.entity_id
WHERE s.entity_type = 'contact' AND s.stage = stage_name;
