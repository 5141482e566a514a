-- Every proposed move of every contact in `scope`, from the change log and activities.
-- At one instant, points apply by priority: creation, deal outcomes, CRM fields, then rules.
-- Parameters come from config/lifecycle.yaml. Columns follow revorch.lifecycle.machine.POINT_SCHEMA.
WITH contact_changes AS (
    SELECT object_id AS entity_id, occurred_at, event_id, properties
    FROM change_log
    WHERE object_type = 'contact' AND object_id IN (SELECT entity_id FROM scope)
),
created AS (
    SELECT entity_id, min(occurred_at) AS at, 0 AS priority,
           arg_min(event_id, (occurred_at, event_id)) AS event_id,
           'lead' AS proposed, 'set' AS kind, 'contact_created' AS rule, 'rule' AS decided_by,
           'first seen in the CRM' AS reason
    FROM contact_changes GROUP BY entity_id
),
crm_stage AS (
    SELECT entity_id, occurred_at, 3, event_id,
           $crm_stages[list_position($crm_values, properties->>'lifecycle_stage')],
           'set', 'crm:lifecycle_stage', 'human',
           'CRM lifecycle_stage set to ' || (properties->>'lifecycle_stage')
    FROM contact_changes
    WHERE list_contains($crm_values, properties->>'lifecycle_stage')
),
disqualified AS (
    SELECT entity_id, occurred_at, 4, event_id, 'disqualified', 'set', 'crm:lead_status', 'human',
           'CRM lead_status set to ' || (properties->>'lead_status')
    FROM contact_changes
    WHERE list_contains($disqualifying_statuses, properties->>'lead_status')
),
activity AS (
    SELECT contact_id AS entity_id, activity_at, id,
           CASE WHEN activity_type = 'web_visit' AND url LIKE '%/pricing%' THEN 'pricing_visit'
                ELSE activity_type END AS signal
    FROM activities
    WHERE contact_id IN (SELECT entity_id FROM scope) AND activity_at IS NOT NULL AND NOT _deleted
),
scored AS (
    SELECT *, sum(coalesce($weights[list_position($weight_names, signal)], 0)) OVER (
               PARTITION BY entity_id ORDER BY activity_at
               RANGE BETWEEN to_days(CAST($window_days AS INTEGER)) PRECEDING AND CURRENT ROW
           ) AS score
    FROM activity
),
engaged AS (
    -- The moment the rolling engagement score first reaches the threshold.
    SELECT entity_id, activity_at, 5, 'activity:' || id, 'mql', 'rule', 'engagement_mql', 'rule',
           'engagement score ' || score || ' reached ' || $mql_threshold
    FROM (SELECT *, lag(score, 1, 0) OVER (PARTITION BY entity_id ORDER BY activity_at, id) AS before
          FROM scored)
    WHERE score >= $mql_threshold AND before < $mql_threshold
),
recycled AS (
    SELECT entity_id, activity_at, 6, 'activity:' || id, 'lead', 'rule', 'buying_signal_recycle', 'rule',
           'buying signal: ' || signal
    FROM activity
    WHERE list_contains($buying_signals, signal)
      AND entity_id IN (SELECT entity_id FROM disqualified)
),
deal_changes AS (
    SELECT d.contact_id AS entity_id, c.occurred_at, c.event_id, c.properties, d.id AS deal_id
    FROM change_log AS c JOIN deals AS d ON d.id = c.object_id
    WHERE c.object_type = 'deal' AND d.deal_type = 'new_business'
      AND d.contact_id IN (SELECT entity_id FROM scope)
),
deal_created AS (
    SELECT entity_id, min(occurred_at), 1, arg_min(event_id, (occurred_at, event_id)),
           'opportunity', 'rule', 'deal_created', 'rule', 'deal ' || deal_id || ' created'
    FROM deal_changes GROUP BY entity_id, deal_id
),
deal_closed AS (
    SELECT entity_id, occurred_at, 2, event_id,
           CASE WHEN (properties->>'stage') = 'closedwon' THEN 'customer' ELSE 'lead' END,
           'rule',
           CASE WHEN (properties->>'stage') = 'closedwon' THEN 'deal_won' ELSE 'deal_lost_recycle' END,
           'rule', 'deal ' || deal_id || ' ' || (properties->>'stage')
    FROM deal_changes
    WHERE (properties->>'stage') IN ('closedwon', 'closedlost')
)
-- A contact whose own record has not arrived yet (only its deals or activities have) waits:
-- it has no stage until the record comes, and is then replayed whole.
SELECT * FROM (
    SELECT * FROM created
    UNION ALL SELECT * FROM crm_stage
    UNION ALL SELECT * FROM disqualified
    UNION ALL SELECT * FROM engaged
    UNION ALL SELECT * FROM recycled
    UNION ALL SELECT * FROM deal_created
    UNION ALL SELECT * FROM deal_closed
) WHERE entity_id IN (SELECT entity_id FROM created)
