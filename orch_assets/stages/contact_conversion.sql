-- Conversion to the next stage of the contact funnel, in percent: of the contacts that reached
-- $stage, the share that reached $next_stage. "Reached" as in metrics.funnel_conversion
-- (docs/metrics.md): the furthest funnel stage a contact ever entered is that stage or a later
-- one, so a contact that jumped a stage passed it. Deleted contacts are left out.
WITH funnel AS (SELECT ['lead', 'mql', 'sql', 'opportunity', 'customer'] AS stages),
contacts_reached AS (
    SELECT max(list_position((SELECT stages FROM funnel), t.to_stage)) AS furthest
    FROM stages.stage_transitions AS t
    WHERE t.entity_type = 'contact'
      AND t.entity_id IN (SELECT id FROM contacts WHERE NOT _deleted)
    GROUP BY t.entity_id
)
SELECT round(100 * count(*) FILTER (
                 WHERE furthest >= list_position((SELECT stages FROM funnel), $next_stage))
             / nullif(count(*) FILTER (
                 WHERE furthest >= list_position((SELECT stages FROM funnel), $stage)), 0), 1)
       AS conversion_to_next_pct
FROM contacts_reached
