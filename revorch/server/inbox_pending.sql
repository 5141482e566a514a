-- One page of the approvals inbox: actions waiting for a person, oldest first, with the
-- decision behind each (agent, tier, model, inputs, scores), the rules that held it and the
-- seconds left before its approval SLA runs out (negative: overdue), on the configured clock.
WITH page AS (
    SELECT q.*, a.policy_version, a.decision_id, a.payload
    FROM governance.approval_queue AS q
    JOIN governance.actions AS a USING (action_id)
    ORDER BY q.proposed_at, q.action_id
    LIMIT $limit OFFSET $offset
),
decision AS (
    SELECT decision_id, agent, tier, model, prompt_version, fallback_reason, input, output,
           decided_at
    FROM agents.decisions
    WHERE decision_id IN (SELECT decision_id FROM page)
    QUALIFY row_number() OVER (PARTITION BY decision_id ORDER BY decided_at DESC) = 1
)
SELECT page.*, decision.* EXCLUDE (decision_id),
       epoch(page.approval_due_at - clock_now()) AS sla_seconds_left
FROM page
LEFT JOIN decision USING (decision_id)
ORDER BY page.proposed_at, page.action_id
