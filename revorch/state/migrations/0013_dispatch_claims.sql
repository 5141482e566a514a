-- Revorch state store, version 13: which dispatcher is sending an action. Each dispatcher
-- journal has an id (revorch/governance/journal.py); a dispatcher takes an action left
-- 'sending' only if its own journal claimed it (its own interrupted attempt), never one that
-- a dispatcher on another machine, with another journal, is delivering at that moment.
ALTER TABLE governance.actions ADD COLUMN sending_journal VARCHAR;
