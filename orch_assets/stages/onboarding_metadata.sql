-- Onboardings not activated yet (in progress or overdue), the median days since they started,
-- and the conversion to adoption: of the onboardings whose outcome is known (activated, or
-- past due without activation), the share activated.
SELECT count(*) FILTER (WHERE status <> 'activated') AS "count",
       count(*) FILTER (WHERE status = 'in_progress') AS in_progress,
       count(*) FILTER (WHERE status = 'overdue') AS overdue,
       round(median(epoch(clock_now()) - epoch(started_at))
             FILTER (WHERE status <> 'activated') / 86400, 1) AS median_days_in_stage,
       round(100 * count(*) FILTER (WHERE status = 'activated')
             / nullif(count(*) FILTER (WHERE status IN ('activated', 'overdue')), 0), 1)
           AS conversion_to_next_pct
FROM stages.onboarding_progress
