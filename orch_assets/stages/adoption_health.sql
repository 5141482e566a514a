-- Health of every active subscription: seat use, its trend, and angry tickets. The rows of the
-- subscriptions in `scope` (revorch/lifecycle/keyed_tables.py; adoption_health_touched.sql
-- says which, the ones the clock moved over included).
WITH clock AS (SELECT clock_now() AS as_of),
active AS (
    SELECT * FROM subscriptions
    WHERE status = 'active' AND NOT _deleted AND id IN (SELECT key FROM scope)
),
earlier_use AS (
    SELECT s.id,
           arg_max(TRY_CAST(c.properties->>'seats_active' AS DOUBLE), c.occurred_at)
               AS seats_active_before
    FROM active AS s
    JOIN change_log AS c ON c.object_type = 'subscription' AND c.object_id = s.id
    WHERE json_exists(c.properties, '$.seats_active')
      AND c.occurred_at <= (SELECT as_of FROM clock) - to_days(CAST($lookback_days AS INTEGER))
    GROUP BY s.id
),
ticket_load AS (
    SELECT company_id,
           count(*) FILTER (WHERE status <> 'closed') AS open_tickets,
           count(*) FILTER (WHERE created_at >= (SELECT as_of FROM clock)
                                               - to_days(CAST($lookback_days AS INTEGER))
                              AND (list_contains($angry_priorities, priority)
                                   OR csat <= $angry_csat_at_most)) AS angry_tickets
    FROM tickets WHERE NOT _deleted AND company_id IN (SELECT company_id FROM active)
    GROUP BY company_id
),
measured AS (
    SELECT s.id AS subscription_id, s.company_id, s.plan, s.arr, s.seats, s.seats_active,
           s.end_date,
           s.seats_active / nullif(s.seats, 0) AS utilization,
           e.seats_active_before,
           (s.seats_active - e.seats_active_before) / nullif(e.seats_active_before, 0)
               AS usage_change,
           coalesce(t.open_tickets, 0) AS open_tickets,
           coalesce(t.angry_tickets, 0) AS angry_tickets
    FROM active AS s
    LEFT JOIN earlier_use AS e ON e.id = s.id
    LEFT JOIN ticket_load AS t ON t.company_id = s.company_id
)
SELECT *,
       round(100 * (0.5 * least(coalesce(utilization, 0), 1)
                    + 0.3 * (1 - least(angry_tickets, 3) / 3)
                    + 0.2 * greatest(0, least(1, 1 + 2 * least(coalesce(usage_change, 0), 0)))))
           AS health_score,
       CASE WHEN health_score >= 70 THEN 'healthy'
            WHEN health_score >= 40 THEN 'watch'
            ELSE 'at_risk' END AS health_band
FROM measured
