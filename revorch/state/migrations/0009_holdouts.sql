-- Revorch state store, version 8: holdouts. Every (playbook, entity) an action was proposed
-- for, with the arm the policy put it in and the moment of that first assignment (its
-- exposure). Rows are only inserted: an entity keeps its arm and its exposure for good.
CREATE TABLE governance.holdout_assignments (
    playbook        VARCHAR NOT NULL,     -- handoff/<name>, or <agent>/<action type>
    entity_type     VARCHAR NOT NULL,
    entity_id       VARCHAR NOT NULL,
    company_id      VARCHAR,
    arm             VARCHAR NOT NULL,     -- treatment or holdout
    randomized      BOOLEAN NOT NULL,     -- false: the playbook's holdout was switched off
    unit            DOUBLE NOT NULL,      -- the entity's hash draw in [0, 1)
    share           DOUBLE NOT NULL,      -- the holdout share in force when it was assigned
    policy_version  VARCHAR NOT NULL,
    exposed_at      TIMESTAMPTZ NOT NULL, -- clock time of the first assignment
    first_action_id VARCHAR NOT NULL,
    run_id          VARCHAR,
    PRIMARY KEY (playbook, entity_type, entity_id)
);
