-- How far each contact in `scope` got in the funnel (revorch/lifecycle/keyed_tables.py keeps
-- the table metrics.funnel_progress by contact; touched_contacts.sql says which): its lead
-- source, its furthest funnel stage and a bit per stage it explicitly entered. Contacts that
-- are deleted, or whose record has not arrived, have no row.
WITH funnel(stage, stage_order) AS (
    VALUES ('lead', 1), ('mql', 2), ('sql', 3), ('opportunity', 4), ('customer', 5)
)
SELECT t.entity_id AS contact_id,
       coalesce(any_value(c.lead_source), '(unknown)') AS lead_source,
       max(f.stage_order) AS furthest,
       bit_or(1 << f.stage_order) AS entered_mask
FROM stages.stage_transitions AS t
JOIN funnel AS f ON f.stage = t.to_stage
-- Both sides filtered by scope: a join alone would read every contact.
JOIN (SELECT * FROM contacts WHERE id IN (SELECT key FROM scope)) AS c ON c.id = t.entity_id
WHERE t.entity_type = 'contact' AND NOT c._deleted AND t.entity_id IN (SELECT key FROM scope)
GROUP BY t.entity_id
