-- Every won new-business deal starts onboarding by itself, once: a record with its CSM and
-- dated tasks. The CSM is picked by a stable hash of the account among the active owners of
-- the role, so a rebuild picks the same one.
INSERT INTO stages.onboarding
WITH won AS (
    SELECT id, company_id, closed_at FROM deals
    WHERE deal_type = 'new_business' AND stage = 'closedwon' AND closed_at IS NOT NULL
      AND NOT _deleted AND id NOT IN (SELECT deal_id FROM stages.onboarding)
),
owners_for_role AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS slot
    FROM owners WHERE role = $owner_role AND coalesce(is_active, true) AND NOT _deleted
),
assigned AS (
    SELECT *, hash(company_id) % (SELECT count(*) FROM owners_for_role) AS slot FROM won
),
tasks AS (
    SELECT unnest($task_names) AS task, unnest($task_days) AS due_days
)
SELECT w.id AS onboarding_id, w.company_id, w.id AS deal_id, o.id AS owner_id,
       w.closed_at AS started_at,
       w.closed_at + to_days(CAST(max(t.due_days) AS INTEGER)) AS due_at,
       to_json(list({'task': t.task, 'due_at': w.closed_at + to_days(CAST(t.due_days AS INTEGER))}
                    ORDER BY t.due_days)) AS tasks,
       NULL AS activated_at
FROM assigned AS w
CROSS JOIN tasks AS t
LEFT JOIN owners_for_role AS o ON o.slot = w.slot
GROUP BY w.id, w.company_id, o.id, w.closed_at;

-- Onboarding ends when seat use first reaches the activation level.
UPDATE stages.onboarding AS ob SET activated_at = a.activated_at
FROM (
    SELECT s.deal_id, min(c.occurred_at) AS activated_at
    FROM subscriptions AS s
    JOIN change_log AS c ON c.object_type = 'subscription' AND c.object_id = s.id
    WHERE s.deal_id IN (SELECT deal_id FROM stages.onboarding WHERE activated_at IS NULL)
      AND TRY_CAST(c.properties->>'seats_active' AS DOUBLE) >= $activation_utilization * s.seats
    GROUP BY s.deal_id
) AS a
WHERE ob.deal_id = a.deal_id AND ob.activated_at IS NULL
