-- Revorch state store, version 6: a contact deleted in the CRM is in no lifecycle stage view
-- (stages.leads, mqls, sqls), as it is in no handoff or agent input.
CREATE OR REPLACE MACRO contacts_in_stage(stage_name) AS TABLE
SELECT s.entity_id AS contact_id, c.first_name, c.last_name, c.email, c.company_id, c.owner_id,
       c.lead_source, s.entered_at, date_diff('day', s.entered_at, data_clock()) AS days_in_stage,
       s.decided_by, s.rule, s.reason
FROM stages.entity_stages AS s
JOIN contacts AS c ON c.id = s.entity_id
WHERE s.entity_type = 'contact' AND s.stage = stage_name AND NOT c._deleted;
