-- Every stay of the contacts and accounts in `scope` in a stage (revorch/lifecycle/
-- keyed_tables.py keeps metrics.stage_stays by entity; touched_entities.sql says which): a
-- stay starts with the move into a stage and ends with the entity's next move (left_at is
-- NULL while it lasts).
SELECT entity_type || ':' || entity_id AS entity_key, entity_type, entity_id, seq,
       to_stage AS stage, transitioned_at AS entered_at,
       lead(transitioned_at) OVER (PARTITION BY entity_type, entity_id ORDER BY seq) AS left_at
FROM stages.stage_transitions
WHERE entity_type || ':' || entity_id IN (SELECT key FROM scope)
