-- Revorch state store, version 11: claims that serialize the writes that need it when many
-- processes write at once (the DuckLake backend, revorch/state/backend.py). A transaction
-- that must not interleave with another of its kind updates its claim row; two concurrent
-- ones then conflict at commit and the later one is retried on the newer snapshot.
CREATE TABLE write_claims_change_log (claims BIGINT NOT NULL);  -- ingestion's de-duplication
INSERT INTO write_claims_change_log VALUES (0);
CREATE TABLE write_claims_audit_log (claims BIGINT NOT NULL);   -- the audit chain's next link
INSERT INTO write_claims_audit_log VALUES (0);
