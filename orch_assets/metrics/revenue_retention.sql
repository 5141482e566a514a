-- Gross and net revenue retention over the trailing 12 months that end at the clock,
-- one row, summed over metrics.revenue_retention_accounts (docs/metrics.md has the formulas):
--   nrr = (starting_arr - churned_arr - contraction_arr + expansion_arr) / starting_arr
--   grr = gross_retained_arr / starting_arr, where each account's gross_retained_arr is its
--         starting ARR less its churn and contraction net of its own expansion, capped at
--         its starting ARR: expansion never lifts GRR, and GRR is at most 100%.
-- Both are NULL when no subscription was active at the start of the window.
CREATE OR REPLACE VIEW metrics.revenue_retention AS
WITH clock AS (
    SELECT clock_now() AS window_end,
           (clock_now() AT TIME ZONE 'UTC' - INTERVAL 12 MONTH) AT TIME ZONE 'UTC' AS window_start
),
totals AS (
    SELECT count(*) AS accounts,
           CAST(coalesce(sum(subscriptions), 0) AS BIGINT) AS subscriptions,
           CAST(coalesce(sum(churned_subscriptions), 0) AS BIGINT) AS churned_subscriptions,
           coalesce(sum(starting_arr), 0) AS starting_arr,
           coalesce(sum(churned_arr), 0) AS churned_arr,
           coalesce(sum(contraction_arr), 0) AS contraction_arr,
           coalesce(sum(expansion_arr), 0) AS expansion_arr,
           coalesce(sum(net_retained_arr), 0) AS net_retained_arr,
           coalesce(sum(gross_retained_arr), 0) AS gross_retained_arr
    FROM metrics.revenue_retention_accounts
)
SELECT clock.window_start, clock.window_end, totals.*,
       gross_retained_arr / nullif(starting_arr, 0) AS grr,
       net_retained_arr / nullif(starting_arr, 0) AS nrr
FROM clock CROSS JOIN totals;
