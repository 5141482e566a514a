-- Active subscriptions now, their health, the median days since they started, and the
-- conversion to renewal: of the account machine's moves out of adoption, the share into the
-- renewal window (the others churned).
WITH out_of_adoption AS (
    SELECT count(*) FILTER (WHERE to_stage = 'renewal') AS to_renewal, count(*) AS moves
    FROM stages.stage_transitions
    WHERE entity_type = 'company' AND from_stage = 'adoption'
)
SELECT count(*) AS "count",
       count(*) FILTER (WHERE h.health_band = 'at_risk') AS at_risk,
       round(avg(h.health_score), 1) AS mean_health_score,
       round(median(epoch(clock_now()) - epoch(CAST(s.start_date AS TIMESTAMP))) / 86400, 1)
           AS median_days_in_stage,
       (SELECT round(100 * to_renewal / nullif(moves, 0), 1) FROM out_of_adoption)
           AS conversion_to_next_pct
FROM stages.adoption_health AS h
JOIN subscriptions AS s ON s.id = h.subscription_id
