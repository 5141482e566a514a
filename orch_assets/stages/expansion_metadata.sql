-- Expansion signals now (a subscription with nearly every seat in use, or an open expansion
-- deal), the median days the open expansion deals have been open (a seat signal has no start),
-- and the conversion to expanded: the win rate of closed expansion deals.
WITH closed AS (
    SELECT count(*) FILTER (WHERE stage = 'closedwon') AS won, count(*) AS deals
    FROM deals
    WHERE deal_type = 'expansion' AND stage IN ('closedwon', 'closedlost') AND NOT _deleted
)
SELECT count(*) AS "count", count(e.open_expansion_deal_id) AS open_expansion_deals,
       round(median(epoch(clock_now()) - epoch(d.created_at)) / 86400, 1) AS median_days_in_stage,
       (SELECT round(100 * won / nullif(deals, 0), 1) FROM closed) AS conversion_to_next_pct
FROM stages.expansion AS e
LEFT JOIN deals AS d ON d.id = e.open_expansion_deal_id
