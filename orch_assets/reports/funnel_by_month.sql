-- The funnel of metrics.funnel_conversion (one funnel definition: contacts as Revorch's stage
-- machine places them, "reached" = the furthest funnel stage ever entered is that stage or a
-- later one), split by the month (UTC) each contact first entered the funnel, its cohort.
-- Summed over the months, `reached` equals metrics.funnel_conversion's '(all)' row.
-- A recent cohort has had less time to move on: its conversion is still rising.
CREATE OR REPLACE VIEW metrics.funnel_by_month AS
WITH funnel(stage, stage_order) AS (
    VALUES ('lead', 1), ('mql', 2), ('sql', 3), ('opportunity', 4), ('customer', 5)
),
contact_progress AS (
    SELECT t.entity_id AS contact_id,
           max(f.stage_order) AS furthest,
           CAST(date_trunc('month', min(t.transitioned_at) AT TIME ZONE 'UTC') AS DATE) AS month
    FROM stages.stage_transitions AS t
    JOIN funnel AS f ON f.stage = t.to_stage
    WHERE t.entity_type = 'contact'
    GROUP BY t.entity_id
),
live AS (
    SELECT p.* FROM contact_progress AS p JOIN contacts AS c ON c.id = p.contact_id
    WHERE NOT c._deleted
),
reached AS (
    SELECT l.month, f.stage, f.stage_order,
           count(*) FILTER (WHERE l.furthest >= f.stage_order) AS reached
    FROM live AS l CROSS JOIN funnel AS f
    GROUP BY ALL
)
SELECT month, stage, stage_order,
       CAST(reached AS BIGINT) AS reached,
       lead(stage) OVER next AS next_stage,
       CAST(lead(reached) OVER next AS BIGINT) AS reached_next,
       lead(reached) OVER next / nullif(reached, 0) AS conversion_to_next
FROM reached
WINDOW next AS (PARTITION BY month ORDER BY stage_order)
ORDER BY month, stage_order;
