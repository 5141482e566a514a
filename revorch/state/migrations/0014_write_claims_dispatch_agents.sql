-- Revorch state store, version 14: which dispatcher is sending an action. Each dispatcher
-- journal has an id (revorch/governance/journal.py); a dispatcher takes an action left
-- 'sending' only if its own journal claimed it (its own interrupted attempt), never one that
-- a dispatcher on another machine, with another journal, is delivering at that moment.
ALTER TABLE governance.actions ADD COLUMN sending_journal VARCHAR;

-- And a claim for the agents' budget reservations and recorded decisions: two runs that
-- reserve, or record, at once conflict on DuckLake, so the later one counts the other's
-- reservation, or finds its decisions (revorch/agents/runtime.py). On the file the writer
-- lock already orders them.
CREATE TABLE write_claims_agents (claims BIGINT NOT NULL);
INSERT INTO write_claims_agents VALUES (0);
