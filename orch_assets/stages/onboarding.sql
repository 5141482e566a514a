-- Every won new-business deal starts onboarding by itself: a record with its CSM and tasks.
-- The CSM is picked by a stable hash of the account, so a rebuild picks the same one.
INSERT INTO stages.onboarding
WITH won AS (
    SELECT * FROM deals
    WHERE deal_type = 'new_business' AND stage = 'closedwon' AND closed_at IS NOT NULL
      AND NOT _deleted
),
owners_for_role AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS slot, count(*) OVER () AS slots
    FROM owners WHERE role = $owner_role AND coalesce(is_active, true) AND NOT _deleted
),
tasks AS (
    SELECT unnest($task_names) AS task, unnest($task_days) AS due_days
),
activation AS (
    SELECT s.deal_id, min(c.occurred_at) AS activated_at
    FROM change_log AS c JOIN subscriptions AS s ON s.id = c.object_id
    WHERE c.object_type = 'subscription'
      AND TRY_CAST(c.properties->>'seats_active' AS DOUBLE) >= $activation_utilization * s.seats
    GROUP BY s.deal_id
)
SELECT w.id AS onboarding_id, w.company_id, w.id AS deal_id, o.id AS owner_id,
       w.closed_at AS started_at,
       w.closed_at + to_days(CAST(max(t.due_days) AS INTEGER)) AS due_at,
       to_json(list({'task': t.task, 'due_at': w.closed_at + to_days(CAST(t.due_days AS INTEGER))}
                    ORDER BY t.due_days)) AS tasks,
       a.activated_at
FROM won AS w
CROSS JOIN tasks AS t
LEFT JOIN owners_for_role AS o ON o.slot = hash(w.company_id) % o.slots
LEFT JOIN activation AS a ON a.deal_id = w.id
GROUP BY w.id, w.company_id, o.id, w.closed_at, a.activated_at
