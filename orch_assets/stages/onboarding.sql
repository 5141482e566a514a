-- Every won new-business deal starts onboarding: a record with its CSM and dated tasks.
-- The rows of the deals in `scope` (revorch/lifecycle/keyed_tables.py; onboarding_touched.sql
-- says which), recomputed from the CRM state, so they never depend on what had arrived when
-- the deal was won (an owner or a subscription that arrives later counts at once).
-- The CSM is picked by a stable hash of the account among the active owners of the role who
-- had joined by the time the deal was won (by the CRM's dates, not by when Revorch heard of
-- them), so a later hire does not move the onboardings already running. Those owners are
-- listed once per join date (`eligible`), and each deal takes the list of the last join date
-- before it was won: joining every deal with every owner who had joined by then cost deals x
-- owners (at ten million contacts, about half of the stage chain's CPU).
WITH won AS (
    SELECT id, company_id, closed_at FROM deals
    WHERE deal_type = 'new_business' AND stage = 'closedwon' AND closed_at IS NOT NULL
      AND NOT _deleted AND id IN (SELECT key FROM scope)
),
owners_for_role AS (
    SELECT id, coalesce(created_at, _first_seen_at) AS joined_at
    FROM owners WHERE role = $owner_role AND coalesce(is_active, true) AND NOT _deleted
),
eligible AS (
    SELECT d.joined_at, list(o.id ORDER BY o.id) AS owners
    FROM (SELECT DISTINCT joined_at FROM owners_for_role) AS d
    JOIN owners_for_role AS o ON o.joined_at <= d.joined_at
    GROUP BY d.joined_at
),
assigned AS (
    SELECT w.id AS deal_id,
           e.owners[CAST(hash(w.company_id) % len(e.owners) AS BIGINT) + 1] AS owner_id
    FROM won AS w ASOF JOIN eligible AS e ON w.closed_at >= e.joined_at
),
-- Onboarding ends when seat use first reaches the activation level.
activated AS (
    SELECT s.deal_id, min(c.occurred_at) AS activated_at
    FROM subscriptions AS s
    JOIN change_log AS c ON c.object_type = 'subscription' AND c.object_id = s.id
    WHERE s.deal_id IN (SELECT id FROM won)
      AND TRY_CAST(c.properties->>'seats_active' AS DOUBLE) >= $activation_utilization * s.seats
    GROUP BY s.deal_id
),
tasks AS (
    SELECT unnest($task_names) AS task, unnest($task_days) AS due_days
)
SELECT w.id AS onboarding_id, w.company_id, w.id AS deal_id, a.owner_id,
       w.closed_at AS started_at,
       w.closed_at + to_days(CAST(max(t.due_days) AS INTEGER)) AS due_at,
       to_json(list({'task': t.task, 'due_at': w.closed_at + to_days(CAST(t.due_days AS INTEGER))}
                    ORDER BY t.due_days)) AS tasks,
       act.activated_at
FROM won AS w
CROSS JOIN tasks AS t
LEFT JOIN assigned AS a ON a.deal_id = w.id
LEFT JOIN activated AS act ON act.deal_id = w.id
GROUP BY w.id, w.company_id, a.owner_id, w.closed_at, act.activated_at
ORDER BY w.id
