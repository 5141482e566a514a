-- Customers whose seat use is falling or who file angry tickets enter the renewal-risk path.
CREATE OR REPLACE TABLE handoffs.renewal_risk AS
SELECT h.subscription_id, h.company_id, co.owner_id, h.arr, h.end_date,
       date_diff('day', clock_now(), h.end_date) AS days_to_renewal,
       h.utilization, h.usage_change, h.angry_tickets, h.health_score,
       list_filter([
           CASE WHEN h.usage_change <= -$usage_drop THEN 'seat use fell '
                    || round(-100 * h.usage_change) || '% in ' || CAST($lookback_days AS INTEGER) || ' days' END,
           CASE WHEN h.angry_tickets >= $angry_tickets THEN h.angry_tickets
                    || ' angry tickets in ' || CAST($lookback_days AS INTEGER) || ' days' END
       ], r -> r IS NOT NULL) AS reasons
FROM stages.adoption_health AS h
LEFT JOIN companies AS co ON co.id = h.company_id
WHERE h.usage_change <= -$usage_drop OR h.angry_tickets >= $angry_tickets
