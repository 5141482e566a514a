-- Revorch state store, version 7: a person who approves sees what the model wrote, marked as
-- such. An agent's words travel in payload.model_text (untrusted), apart from the facts; the
-- screen's findings are among verdict_rules ("screen: outside link ...").
CREATE OR REPLACE VIEW governance.approval_queue AS
SELECT action_id, action_type, source, entity_type, entity_id, company_id, reason,
       verdict_rules, facts, payload->'model_text' AS model_text, proposed_at, approval_due_at,
       escalated_at
FROM governance.actions
WHERE status = 'pending_approval'
ORDER BY proposed_at, action_id;
