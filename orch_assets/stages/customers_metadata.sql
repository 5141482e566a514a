-- Customer accounts now, their active ARR, and the median days they have been customers (since
-- the account machine's move out of new or churned that began its current stay). Next stage:
-- the share of them with an onboarding handoff, that is a won new-business deal (an account
-- whose subscription came without one, say imported, gets no onboarding).
WITH customer_since AS (
    SELECT entity_id AS company_id, max(transitioned_at) AS since
    FROM stages.stage_transitions
    WHERE entity_type = 'company' AND from_stage IN ('new', 'churned')
    GROUP BY entity_id
),
won AS (
    SELECT DISTINCT company_id FROM deals
    WHERE deal_type = 'new_business' AND stage = 'closedwon' AND NOT _deleted
)
SELECT count(*) AS "count", sum(c.active_arr) AS active_arr,
       round(median(epoch(clock_now()) - epoch(s.since)) / 86400, 1) AS median_days_in_stage,
       round(100 * count(*) FILTER (WHERE c.company_id IN (SELECT company_id FROM won))
             / nullif(count(*), 0), 1) AS conversion_to_next_pct
FROM stages.customers AS c
LEFT JOIN customer_since AS s USING (company_id)
