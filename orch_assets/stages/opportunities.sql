-- Open new-business deals, with the lifecycle stage of their contact.
CREATE OR REPLACE VIEW stages.opportunities AS
SELECT d.id AS deal_id, d.name, d.company_id, d.contact_id, d.owner_id, d.stage AS deal_stage,
       d.amount, d.currency, d.close_date, d.created_at,
       date_diff('day', d.created_at, clock_now()) AS days_open,
       s.stage AS contact_stage
FROM deals AS d
LEFT JOIN stages.entity_stages AS s ON s.entity_type = 'contact' AND s.entity_id = d.contact_id
WHERE d.deal_type = 'new_business' AND d.stage NOT IN ('closedwon', 'closedlost') AND NOT d._deleted
