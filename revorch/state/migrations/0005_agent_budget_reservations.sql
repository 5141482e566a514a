-- Revorch state store, version 5: money set aside for model calls that are not settled yet.
-- An agent run reserves the worst-case cost of the calls it plans, in one short transaction,
-- before it calls; when it records its decisions it deletes the reservation and writes what
-- the calls really cost to agents.cost_ledger. Budgets count both, so concurrent runs cannot
-- overspend together, and a run that died before settling still counts (conservatively)
-- for the rest of its day.
CREATE TABLE agents.budget_reservations (
    reservation_id VARCHAR NOT NULL,
    run_id         VARCHAR,
    agent          VARCHAR NOT NULL,
    model          VARCHAR NOT NULL,
    day            DATE NOT NULL,
    calls          BIGINT NOT NULL,      -- calls planned
    reserved_usd   DOUBLE NOT NULL,      -- their worst-case cost
    reserved_at    TIMESTAMPTZ NOT NULL
);
