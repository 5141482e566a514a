-- Funnel conversion: how many contacts reached each funnel stage, and what share of them went
-- on to the next one; for all contacts (lead_source = '(all)') and by lead source.
--
-- A contact has "reached" a stage when the furthest funnel stage it ever entered is that stage
-- or a later one. A contact that jumped lead -> sql therefore counts as having reached mql too
-- (it passed it without stopping), so the funnel never widens and every rate is at most 1.
-- "entered" counts only explicit moves into the stage, to show how many passed without stopping.
-- disqualified is not a funnel stage; a recycled contact keeps the furthest stage it reached.
-- Deleted contacts are left out.
CREATE OR REPLACE VIEW metrics.funnel_conversion AS
WITH funnel(stage, stage_order) AS (
    VALUES ('lead', 1), ('mql', 2), ('sql', 3), ('opportunity', 4), ('customer', 5)
),
by_source AS (
    -- metrics.funnel_progress (funnel_progress.sql): one row per contact, not deleted.
    SELECT lead_source, furthest, entered_mask, count(*) AS contacts
    FROM metrics.funnel_progress
    GROUP BY ALL
),
segments AS (
    SELECT lead_source, furthest, entered_mask, contacts FROM by_source
    UNION ALL
    SELECT '(all)', furthest, entered_mask, sum(contacts) FROM by_source GROUP BY ALL
),
reached AS (
    SELECT s.lead_source, f.stage, f.stage_order,
           coalesce(sum(s.contacts) FILTER (WHERE s.furthest >= f.stage_order), 0) AS reached,
           coalesce(sum(s.contacts) FILTER (WHERE (s.entered_mask >> f.stage_order) & 1 = 1), 0)
               AS entered
    FROM segments AS s CROSS JOIN funnel AS f
    GROUP BY ALL
)
SELECT lead_source, stage, stage_order,
       CAST(reached AS BIGINT) AS reached,
       CAST(entered AS BIGINT) AS entered,
       lead(stage) OVER next AS next_stage,
       CAST(lead(reached) OVER next AS BIGINT) AS reached_next,
       lead(reached) OVER next / nullif(reached, 0) AS conversion_to_next
FROM reached
WINDOW next AS (PARTITION BY lead_source ORDER BY stage_order)
ORDER BY lead_source = '(all)' DESC, lead_source, stage_order;
