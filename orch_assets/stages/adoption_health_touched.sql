-- The subscriptions whose health may differ since the last run (the temp table `span`): the
-- subscription changed; a ticket of its company changed (of any company the ticket ever
-- named); or the clock moved the look-back edge over a seat count or a ticket's creation.
WITH changed AS (
    SELECT DISTINCT object_type, object_id FROM change_log
    WHERE load_id > (SELECT since FROM span) AND load_id <= (SELECT upto FROM span)
),
edge AS (  -- the span of the look-back window's start (a second wider: more is harmless)
    SELECT previous_as_of - to_days(CAST($lookback_days AS INTEGER)) - INTERVAL 1 SECOND AS after,
           as_of - to_days(CAST($lookback_days AS INTEGER)) AS upto
    FROM span
),
companies AS (
    SELECT c.properties->>'company_id' AS company_id FROM change_log AS c
    SEMI JOIN (SELECT * FROM changed WHERE object_type = 'ticket') AS t
        ON t.object_type = c.object_type AND t.object_id = c.object_id
    WHERE c.object_type = 'ticket'
    UNION
    SELECT company_id FROM tickets, edge
    WHERE created_at BETWEEN edge.after AND edge.upto
)
SELECT object_id FROM changed WHERE object_type = 'subscription'
UNION
SELECT id FROM subscriptions WHERE company_id IN (SELECT company_id FROM companies)
UNION
SELECT c.object_id FROM change_log AS c, edge
WHERE c.object_type = 'subscription' AND json_exists(c.properties, '$.seats_active')
  AND c.occurred_at BETWEEN edge.after AND edge.upto
