-- The contact funnel: how many contacts reached each funnel stage, as metrics.funnel_conversion
-- counts them (docs/metrics.md): a contact reached a stage when the furthest funnel stage it
-- ever entered is that stage or a later one, so one that jumped a stage passed it. Deleted
-- contacts are left out. Rebuilt whole by stages/leads, the head of the chain, so each contact
-- stage after it reads its conversion from here instead of scanning every move again.
CREATE OR REPLACE TABLE stages.contact_funnel AS
WITH funnel(stage, stage_order) AS (
    VALUES ('lead', 1), ('mql', 2), ('sql', 3), ('opportunity', 4), ('customer', 5)
),
contacts_reached AS (
    SELECT max(f.stage_order) AS furthest
    FROM stages.stage_transitions AS t
    JOIN funnel AS f ON f.stage = t.to_stage
    WHERE t.entity_type = 'contact'
      AND t.entity_id NOT IN (SELECT id FROM contacts WHERE _deleted AND id IS NOT NULL)
    GROUP BY t.entity_id
)
SELECT f.stage, f.stage_order, count(c.furthest) AS reached
FROM funnel AS f
LEFT JOIN contacts_reached AS c ON c.furthest >= f.stage_order
GROUP BY ALL
ORDER BY f.stage_order
