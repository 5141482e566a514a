-- Every proposed move of every customer account (company) in `scope`, from its subscriptions.
-- Moves that happen when time passes (end of onboarding, renewal window) count up to $as_of.
WITH subs AS (
    SELECT * FROM subscriptions
    WHERE company_id IN (SELECT entity_id FROM scope) AND NOT _deleted AND start_date IS NOT NULL
),
started AS (
    SELECT company_id AS entity_id, start_date::TIMESTAMPTZ AS at, 1 AS priority,
           'subscription:' || id AS event_id, 'onboarding' AS proposed, 'rule' AS kind,
           'subscription_started' AS rule, 'rule' AS decided_by,
           'subscription ' || id || ' started' AS reason
    FROM subs WHERE renewal_of IS NULL AND start_date::TIMESTAMPTZ <= $as_of
),
activated AS (
    SELECT s.company_id, min(c.occurred_at), 2, arg_min(c.event_id, (c.occurred_at, c.event_id)),
           'adoption', 'rule', 'activated', 'rule',
           'seat use of ' || s.id || ' reached ' || $activation_utilization
    FROM change_log AS c JOIN subs AS s ON s.id = c.object_id
    WHERE c.object_type = 'subscription'
      AND TRY_CAST(c.properties->>'seats_active' AS DOUBLE) >= $activation_utilization * s.seats
    GROUP BY s.company_id, s.id
),
onboarding_over AS (
    SELECT company_id, start_date::TIMESTAMPTZ + to_days(CAST($onboarding_days AS INTEGER)), 3,
           'subscription:' || id, 'adoption', 'rule', 'onboarding_period_over', 'rule',
           $onboarding_days || ' days since ' || id || ' started'
    FROM subs
    WHERE renewal_of IS NULL
      AND start_date::TIMESTAMPTZ + to_days(CAST($onboarding_days AS INTEGER)) <= $as_of
),
renewal_due AS (
    SELECT company_id, end_date::TIMESTAMPTZ - to_days(CAST($renewal_window_days AS INTEGER)), 4,
           'subscription:' || id, 'renewal', 'rule', 'renewal_window', 'rule',
           id || ' ends on ' || end_date
    FROM subs
    WHERE end_date IS NOT NULL
      AND end_date::TIMESTAMPTZ - to_days(CAST($renewal_window_days AS INTEGER)) <= $as_of
),
renewed AS (
    SELECT company_id, start_date::TIMESTAMPTZ, 5, 'subscription:' || id, 'adoption', 'rule',
           'renewed', 'rule', id || ' renews ' || renewal_of
    FROM subs WHERE renewal_of IS NOT NULL AND start_date::TIMESTAMPTZ <= $as_of
),
churned AS (
    SELECT s.company_id, c.occurred_at, 6, c.event_id, 'churned', 'set',
           'crm:subscription_status', 'human', 'subscription ' || s.id || ' churned'
    FROM change_log AS c JOIN subs AS s ON s.id = c.object_id
    WHERE c.object_type = 'subscription' AND (c.properties->>'status') = 'churned'
)
SELECT * FROM started
UNION ALL SELECT * FROM activated
UNION ALL SELECT * FROM onboarding_over
UNION ALL SELECT * FROM renewal_due
UNION ALL SELECT * FROM renewed
UNION ALL SELECT * FROM churned
