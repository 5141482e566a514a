-- Open new-business deals now, their value, and the median days they have been open.
SELECT count(*) AS "count",
       round(median(epoch(clock_now()) - epoch(created_at)) / 86400, 1) AS median_days_in_stage,
       sum(amount) AS pipeline_value
FROM stages.opportunities
