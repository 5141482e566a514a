-- Revenue retention per account over the trailing 12 months that end at the clock.
-- docs/metrics.md gives the formulas; in short, for the accounts that had a subscription
-- active when the window started (the cohort):
--   starting_arr     ARR of those subscriptions at window_start (field history of arr,
--                    metrics.subscription_arr: subscription_arr.sql)
--   churned_arr      ARR of a subscription line when it churned within the window
--   contraction_arr  drops in ARR at renewals within the window (the renewal's first arr
--                    below the renewed subscription's final arr)
--   expansion_arr    won expansion deals closed within the window, plus rises in ARR at
--                    renewals within the window
--   net_retained_arr     starting - churned - contraction + expansion (NRR's numerator)
--   gross_retained_arr   least(starting, net_retained), at least 0 (GRR's numerator)
-- A subscription line is a subscription active at window_start followed by its renewals
-- (renewal_of) that started by the clock. Dates are compared in UTC.
CREATE OR REPLACE VIEW metrics.revenue_retention_accounts AS
WITH RECURSIVE
clock AS (
    SELECT clock_now() AS window_end,
           (clock_now() AT TIME ZONE 'UTC' - INTERVAL 12 MONTH) AT TIME ZONE 'UTC' AS window_start
),
live AS (
    SELECT * FROM subscriptions WHERE NOT _deleted
),
cohort AS (
    SELECT s.id, s.company_id, s.arr
    FROM live AS s, clock
    WHERE s.start_date <= CAST(clock.window_start AT TIME ZONE 'UTC' AS DATE)
      AND (s.end_date IS NULL OR s.end_date > CAST(clock.window_start AT TIME ZONE 'UTC' AS DATE))
),
arr_at_start AS (
    -- The newest arr set on or before window_start: later expansions are not starting ARR.
    SELECT l.subscription_id AS id, arg_max(l.arr, (l.occurred_at, l.event_id)) AS arr
    FROM metrics.subscription_arr AS l, clock
    WHERE l.occurred_at <= clock.window_start AND l.subscription_id IN (SELECT id FROM cohort)
    GROUP BY l.subscription_id
),
line(cohort_id, link_id, previous_id, depth) AS (
    SELECT id, id, NULL::VARCHAR, 0 FROM cohort
    UNION ALL
    SELECT line.cohort_id, r.id, line.link_id, line.depth + 1
    FROM line
    JOIN live AS r ON r.renewal_of = line.link_id
    JOIN clock ON r.start_date <= CAST(clock.window_end AT TIME ZONE 'UTC' AS DATE)
    WHERE line.depth < 100
),
arr_at_renewal AS (
    -- A renewal's ARR as it started (its first arr): expansions later in its term are
    -- expansion deals, not part of the renewal.
    SELECT l.subscription_id AS id, arg_min(l.arr, (l.occurred_at, l.event_id)) AS arr
    FROM metrics.subscription_arr AS l
    WHERE l.subscription_id IN (SELECT link_id FROM line WHERE depth > 0)
    GROUP BY l.subscription_id
),
renewal_steps AS (
    -- The renewed subscription has ended: its current arr is what it was worth at the end.
    SELECT line.cohort_id, coalesce(p.arr, 0) AS renewed_arr,
           coalesce(a.arr, r.arr, 0) AS renewal_arr
    FROM line
    JOIN live AS r ON r.id = line.link_id
    JOIN live AS p ON p.id = line.previous_id
    LEFT JOIN arr_at_renewal AS a ON a.id = r.id
),
renewals AS (
    SELECT cohort_id,
           sum(greatest(renewed_arr - renewal_arr, 0)) AS contraction_arr,
           sum(greatest(renewal_arr - renewed_arr, 0)) AS renewal_uplift_arr,
           count(*) AS renewals
    FROM renewal_steps
    GROUP BY cohort_id
),
last_links AS (
    SELECT cohort_id, arg_max(link_id, depth) AS link_id FROM line GROUP BY cohort_id
),
lines AS (
    SELECT c.id, c.company_id,
           coalesce(a.arr, c.arr, 0) AS starting_arr,
           CASE WHEN last.status = 'churned' THEN coalesce(last.arr, 0) ELSE 0 END AS churned_arr,
           coalesce(r.contraction_arr, 0) AS contraction_arr,
           coalesce(r.renewal_uplift_arr, 0) AS renewal_uplift_arr,
           coalesce(r.renewals, 0) AS renewals,
           last.status = 'churned' AS churned
    FROM cohort AS c
    LEFT JOIN arr_at_start AS a ON a.id = c.id
    LEFT JOIN renewals AS r ON r.cohort_id = c.id
    JOIN last_links AS l ON l.cohort_id = c.id
    JOIN live AS last ON last.id = l.link_id
),
expansion_deals AS (
    SELECT d.company_id, sum(coalesce(d.amount, 0)) AS expansion_deals_arr, count(*) AS deals
    FROM deals AS d, clock
    WHERE NOT d._deleted AND d.deal_type = 'expansion' AND d.stage = 'closedwon'
      AND coalesce(d.closed_at, CAST(d.close_date AS TIMESTAMP) AT TIME ZONE 'UTC')
          > clock.window_start
      AND coalesce(d.closed_at, CAST(d.close_date AS TIMESTAMP) AT TIME ZONE 'UTC')
          <= clock.window_end
      AND d.company_id IN (SELECT company_id FROM cohort)
    GROUP BY d.company_id
),
accounts AS (
    SELECT company_id,
           count(*) AS subscriptions,
           count(*) FILTER (WHERE churned) AS churned_subscriptions,
           CAST(sum(renewals) AS BIGINT) AS renewals,
           sum(starting_arr) AS starting_arr,
           sum(churned_arr) AS churned_arr,
           sum(contraction_arr) AS contraction_arr,
           sum(renewal_uplift_arr) AS renewal_uplift_arr
    FROM lines
    GROUP BY company_id
)
SELECT a.company_id, clock.window_start, clock.window_end,
       a.subscriptions, a.churned_subscriptions, a.renewals,
       coalesce(e.deals, 0) AS expansion_deals,
       a.starting_arr, a.churned_arr, a.contraction_arr,
       coalesce(e.expansion_deals_arr, 0) AS expansion_deals_arr,
       a.renewal_uplift_arr,
       coalesce(e.expansion_deals_arr, 0) + a.renewal_uplift_arr AS expansion_arr,
       a.starting_arr - a.churned_arr - a.contraction_arr
           + coalesce(e.expansion_deals_arr, 0) + a.renewal_uplift_arr AS net_retained_arr,
       -- What GRR keeps of the account: its retained ARR, never more than it started with.
       greatest(0, least(a.starting_arr, a.starting_arr - a.churned_arr - a.contraction_arr
           + coalesce(e.expansion_deals_arr, 0) + a.renewal_uplift_arr)) AS gross_retained_arr
FROM accounts AS a
CROSS JOIN clock
LEFT JOIN expansion_deals AS e USING (company_id)
ORDER BY a.company_id;
