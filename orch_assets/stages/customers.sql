-- Customer accounts (every account stage but churned), with their active ARR.
CREATE OR REPLACE VIEW stages.customers AS
SELECT s.entity_id AS company_id, co.name, co.tier, co.industry, co.owner_id,
       s.stage AS account_stage, s.entered_at AS stage_entered_at,
       coalesce(sum(sub.arr), 0) AS active_arr, count(sub.id) AS active_subscriptions
FROM stages.entity_stages AS s
JOIN companies AS co ON co.id = s.entity_id
LEFT JOIN subscriptions AS sub
       ON sub.company_id = s.entity_id AND sub.status = 'active' AND NOT sub._deleted
WHERE s.entity_type = 'company' AND s.stage <> 'churned'
GROUP BY ALL
