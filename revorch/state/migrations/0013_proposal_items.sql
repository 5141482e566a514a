-- Revorch state store, version 13: every agent's open items as they stood at the last
-- proposal, with their input hashes (revorch/governance/open_items.py), so a proposal reads
-- again only the items touched since, not every open item.
CREATE TABLE governance.open_items (
    agent       VARCHAR NOT NULL,
    entity_id   VARCHAR NOT NULL,
    input_hash  VARCHAR NOT NULL
);
