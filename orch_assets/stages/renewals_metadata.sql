-- Subscriptions in their renewal window now, their ARR, the median days since they entered the
-- window, and the renewal rate: of the account machine's moves out of renewal, the share back
-- to adoption (renewed; the others churned).
WITH out_of_renewal AS (
    SELECT count(*) FILTER (WHERE to_stage = 'adoption') AS renewed, count(*) AS moves
    FROM stages.stage_transitions
    WHERE entity_type = 'company' AND from_stage = 'renewal'
)
SELECT count(*) AS "count", sum(arr) AS arr_up_for_renewal,
       count(*) FILTER (WHERE at_risk) AS at_risk,
       round(median($renewal_window_days - days_to_renewal), 1) AS median_days_in_stage,
       (SELECT round(100 * renewed / nullif(moves, 0), 1) FROM out_of_renewal)
           AS conversion_to_next_pct
FROM stages.renewals
