-- Win rate of new-business deals: won / (won + lost), over all time (period = 'all') and by
-- the calendar quarter (UTC) the deal closed in. Closed means stage closedwon or closedlost;
-- the close time is closed_at, or close_date when closed_at is missing. Open deals, renewals
-- and expansions are not counted.
CREATE OR REPLACE VIEW metrics.win_rate AS
WITH closed AS (
    SELECT stage = 'closedwon' AS won, coalesce(amount, 0) AS amount,
           CAST(date_trunc('quarter', coalesce(closed_at AT TIME ZONE 'UTC',
                                               CAST(close_date AS TIMESTAMP))) AS DATE)
               AS quarter_start
    FROM deals
    WHERE NOT _deleted AND deal_type = 'new_business' AND stage IN ('closedwon', 'closedlost')
),
periods AS (
    SELECT 'all' AS period, NULL::DATE AS quarter_start, won, amount FROM closed
    UNION ALL
    SELECT strftime(quarter_start, '%Y') || '-Q' || quarter(quarter_start), quarter_start,
           won, amount
    FROM closed WHERE quarter_start IS NOT NULL
)
SELECT period, quarter_start,
       count(*) FILTER (WHERE won) AS won_deals,
       count(*) FILTER (WHERE NOT won) AS lost_deals,
       count(*) FILTER (WHERE won) / nullif(count(*), 0) AS win_rate,
       coalesce(sum(amount) FILTER (WHERE won), 0) AS won_amount
FROM periods
GROUP BY ALL
ORDER BY quarter_start NULLS FIRST;
