-- Revorch state store, version 17: each agent's open items with the hashes of the inputs it
-- last read for them (revorch/agents/incremental.py, ``record_items``), so a proposal takes
-- them instead of reading every agent's inputs a second time (revorch/governance/open_items.py).
CREATE TABLE agents.item_hashes (
    agent       VARCHAR NOT NULL,
    entity_id   VARCHAR NOT NULL,
    input_hash  VARCHAR NOT NULL
);
