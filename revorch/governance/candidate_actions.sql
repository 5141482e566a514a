-- What the agents recommend and the handoffs call for, as candidate actions, one row each.
-- `dedup_key` names the proposal within its source and entity: an agent's recommendation
-- for an entity, a handoff's occurrence. The same candidate seen again is the same action.
-- An agent proposes only from its decision on an item still open, as the item stands now
-- (governance.open_items: every agent's open items and their input hashes). A decision taken
-- on what had arrived earlier, or on an item closed since, proposes nothing, so the actions
-- do not depend on the order events arrived in. Only the items whose proposal may have
-- changed are looked at (revorch/governance/open_items.py): every item of the agents in
-- $everything, the items read again (`proposal_scope`) and those decided after
-- $decided_after (NULL: every decision).
WITH scope AS (
    SELECT agent, entity_id FROM proposal_scope
    UNION
    SELECT agent, entity_id FROM governance.open_items WHERE list_contains($everything, agent)
    UNION
    SELECT agent, entity_id FROM agents.decisions
    WHERE $decided_after IS NULL OR decided_at > $decided_after
),
-- Keys first, the decisions' JSON only for the ones chosen: the scan stays narrow.
current_keys AS (
    SELECT d.decision_id, d.decided_at FROM agents.decisions AS d
    JOIN scope AS s ON s.agent = d.agent AND s.entity_id = d.entity_id
    JOIN governance.open_items AS o
      ON o.agent = d.agent AND o.entity_id = d.entity_id AND o.input_hash = d.input_hash
    QUALIFY row_number() OVER (PARTITION BY d.agent, d.entity_id
                               ORDER BY d.decided_at DESC, d.decision_id) = 1
),
current_decisions AS (
    SELECT d.* FROM agents.decisions AS d SEMI JOIN current_keys USING (decision_id, decided_at)
),
agent_candidates AS (
    SELECT d.agent AS source, m.action_type, m.entity_type, d.entity_id,
           d.output->>'next_action' AS dedup_key, d.decision_id,
           d.input->>'company_id' AS company_id, d.tier,
           TRY_CAST(d.output->>'confidence' AS DOUBLE) AS confidence,
           TRY_CAST(coalesce(d.input->>'amount', d.input->>'arr', d.input->>'deal_amount',
                             d.input->>'active_arr') AS DOUBLE) AS amount,
           TRY_CAST(d.output->>'risk_score' AS DOUBLE) AS risk_score,
           CAST(d.output AS VARCHAR) AS details,
           coalesce(d.input->>'owner_id',
                    CASE WHEN d.agent = 'lead_qualification' THEN contact.owner_id END) AS owner_id
    FROM current_decisions AS d
    JOIN action_map AS m ON m.source = d.agent AND m.recommendation = (d.output->>'next_action')
    -- A plain equality join: DuckDB hashes it (with the agent in the ON clause it loops).
    LEFT JOIN contacts AS contact ON contact.id = d.entity_id
),
handoff_candidates AS (
    SELECT 'handoff/follow_up_cadence' AS source, 'send_follow_up' AS action_type,
           'contact' AS entity_type, f.contact_id AS entity_id,
           CAST(f.signal_at AS VARCHAR) AS dedup_key, c.company_id, f.reason,
           json_object('cadence', f.cadence, 'signal', f.signal,
                       'next_touch_due_at', f.next_touch_due_at) AS details,
           f.owner_id
    FROM handoffs.follow_up_cadence AS f
    JOIN contacts AS c ON c.id = f.contact_id AND NOT c._deleted  -- nobody writes to the deleted
    UNION ALL
    SELECT 'handoff/sla_escalations', 'notify_manager', 'contact', s.contact_id,
           s.stage || ' ' || CAST(s.entered_at AS VARCHAR), c.company_id,
           'first touch of ' || upper(s.stage) || ' missed its SLA (due '
               || strftime(s.due_at, '%Y-%m-%d %H:%M') || ')',
           json_object('stage', s.stage, 'due_at', s.due_at, 'owner_id', s.owner_id),
           s.escalate_to
    FROM handoffs.sla_escalations AS s
    JOIN contacts AS c ON c.id = s.contact_id AND NOT c._deleted
    WHERE s.status = 'breached'
    UNION ALL
    SELECT 'handoff/renewal_risk', 'escalate_renewal_risk', 'subscription', r.subscription_id,
           CAST(r.end_date AS VARCHAR), r.company_id, array_to_string(r.reasons, '; '),
           json_object('end_date', r.end_date, 'days_to_renewal', r.days_to_renewal,
                       'health_score', r.health_score, 'arr', r.arr),
           r.owner_id
    FROM handoffs.renewal_risk AS r
    UNION ALL
    SELECT 'handoff/onboarding', 'create_onboarding_tasks', 'onboarding', o.onboarding_id,
           o.onboarding_id, o.company_id, 'won deal ' || o.deal_id || ' starts onboarding',
           json_object('tasks', o.tasks, 'due_at', o.due_at), o.owner_id
    FROM stages.onboarding AS o
),
candidates AS (
    SELECT source, action_type, entity_type, entity_id, dedup_key, decision_id, company_id,
           tier, confidence, amount, risk_score, NULL AS reason, details, owner_id
    FROM agent_candidates
    UNION ALL
    SELECT source, action_type, entity_type, entity_id, dedup_key, NULL, company_id,
           'rule', NULL, NULL, NULL, reason, CAST(details AS VARCHAR), owner_id
    FROM handoff_candidates
),
customer_since AS (
    SELECT company_id, min(start_date) AS since FROM subscriptions
    WHERE NOT _deleted GROUP BY company_id
),
-- A won deal makes a customer before its subscription lands (its age is then unknown).
won AS (
    SELECT DISTINCT company_id FROM deals WHERE stage = 'closedwon' AND NOT _deleted
)
SELECT substr(sha256(concat_ws('|', c.source, c.entity_type, c.entity_id, c.dedup_key)), 1, 24)
           AS action_id,
       c.* REPLACE (coalesce(c.owner_id, co.owner_id) AS owner_id), co.tier AS account_tier,
       date_diff('day', cs.since, CAST(clock_now() AS DATE)) AS customer_age_days,
       CASE WHEN co.id IS NOT NULL THEN cs.since IS NOT NULL OR w.company_id IS NOT NULL END
           AS is_customer
FROM candidates AS c
LEFT JOIN companies AS co ON co.id = c.company_id
LEFT JOIN customer_since AS cs USING (company_id)
LEFT JOIN won AS w USING (company_id)
WHERE NOT EXISTS (
    SELECT 1 FROM governance.actions AS a
    WHERE a.action_id = substr(sha256(concat_ws('|', c.source, c.entity_type, c.entity_id,
                                                 c.dedup_key)), 1, 24)
)
-- A record that names a record not received yet waits (stages.waiting_references): its
-- recipient or its facts may change when that record arrives. An onboarding is its deal.
AND NOT EXISTS (
    SELECT 1 FROM stages.waiting_references AS w
    WHERE w.record_type = replace(c.entity_type, 'onboarding', 'deal')
      AND w.record_id = c.entity_id
)
AND NOT EXISTS (
    SELECT 1 FROM stages.waiting_references AS w
    WHERE w.record_type = 'company' AND w.record_id = c.company_id
)
ORDER BY action_id
