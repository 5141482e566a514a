-- Revorch state store, version 4: governance. What the orchestrator proposes to do outside
-- itself (actions), what the policy said about each, who approved or rejected it, what was
-- sent where, and an append-only, hash-chained audit trail of all of it.
CREATE SCHEMA governance;

-- The outbox: one row per action, with the decision and reason that produced it. Its status
-- moves proposed -> ready | pending_approval | forbidden -> approved | rejected | expired ->
-- sending -> sent | retry | failed. Every move is also an event in governance.audit_log.
CREATE TABLE governance.actions (
    action_id       VARCHAR NOT NULL,     -- hash of (source, entity_id, recommendation): proposed once
    action_type     VARCHAR NOT NULL,     -- assign_owner, send_follow_up, offer_discount, ...
    source          VARCHAR NOT NULL,     -- the agent or handoff that proposed it
    decision_id     VARCHAR,              -- the agents.decisions row behind an agent's proposal
    entity_type     VARCHAR NOT NULL,     -- contact, deal, ticket, subscription, onboarding
    entity_id       VARCHAR NOT NULL,
    company_id      VARCHAR,
    reason          VARCHAR NOT NULL,
    payload         JSON NOT NULL,        -- what the target receives
    facts           JSON NOT NULL,        -- what the policy judges it by
    proposed_at     TIMESTAMPTZ NOT NULL,
    proposed_run_id VARCHAR,
    status          VARCHAR NOT NULL,
    verdict         VARCHAR,              -- allow, approve or forbid: the latest verdict
    policy_version  VARCHAR,              -- the policy that gave it
    verdict_rules   VARCHAR[],            -- the rules that decided it
    approval_due_at TIMESTAMPTZ,          -- when a pending approval escalates
    escalated_at    TIMESTAMPTZ,
    target          VARCHAR,              -- outbox or webhook
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      VARCHAR,
    sent_at         TIMESTAMPTZ,
    approved_by     VARCHAR,              -- the person who approved it
    resolution      VARCHAR,              -- why it was closed: rejected, expired, forbidden, failed
    updated_at      TIMESTAMPTZ NOT NULL
);

-- Every policy a verdict was given under, by content hash.
CREATE TABLE governance.policy_versions (
    policy_version VARCHAR NOT NULL,      -- sha256 of the policy file, first 12 characters
    label          VARCHAR NOT NULL,      -- the file's own `version`
    first_used_at  TIMESTAMPTZ NOT NULL,
    policy         JSON NOT NULL
);

-- The trail. Rows are only ever appended; each row's hash covers the previous row's hash,
-- so changing or removing a row breaks the chain (`revorch audit verify`).
CREATE TABLE governance.audit_log (
    seq          BIGINT NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR,
    event        VARCHAR NOT NULL,        -- decided, output_refused, proposed, verdict, approved, ...
    actor        VARCHAR NOT NULL,        -- agent:<name>, policy:<version>, human:<name>, dispatcher
    action_id    VARCHAR,
    decision_id  VARCHAR,
    entity_type  VARCHAR,
    entity_id    VARCHAR,
    company_id   VARCHAR,
    detail       JSON NOT NULL,
    prev_hash    VARCHAR NOT NULL,
    hash         VARCHAR NOT NULL
);

-- Every approval, rejection, escalation and expiry, and by whom (from the audit trail).
CREATE VIEW governance.reviews AS
SELECT recorded_at, event, actor, action_id, entity_type, entity_id, company_id,
       detail->>'comment' AS comment, run_id
FROM governance.audit_log
WHERE event IN ('approved', 'rejected', 'escalated', 'expired');

-- Actions waiting for a person, oldest first.
CREATE VIEW governance.approval_queue AS
SELECT action_id, action_type, source, entity_type, entity_id, company_id, reason,
       verdict_rules, facts, proposed_at, approval_due_at, escalated_at
FROM governance.actions
WHERE status = 'pending_approval'
ORDER BY proposed_at, action_id;

-- Everything that happened to a company and its people, contacts, deals and tickets
-- included: every agent decision and every step of every action, in order.
CREATE MACRO governance.company_history(company) AS TABLE
SELECT decided_at AS happened_at, 'decision' AS kind, agent AS actor, entity_id,
       output->>'next_action' AS what, decision_id, NULL AS action_id,
       json_object('tier', tier, 'model', model, 'confidence', output->'confidence',
                   'reasons', output->'reasons', 'fallback_reason', fallback_reason,
                   'cost_usd', cost_usd) AS detail,
       run_id
FROM agents.decisions
WHERE (input->>'company_id') = company
UNION ALL
SELECT recorded_at, event, actor, entity_id, detail->>'action_type', decision_id, action_id,
       detail, run_id
FROM governance.audit_log
WHERE company_id = company
ORDER BY happened_at, kind;
