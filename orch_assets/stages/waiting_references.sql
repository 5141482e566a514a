-- Records that name another record Revorch has not received yet: a contact before its
-- company, a deal before its owner. Events may arrive in any order, so a missing record is
-- not an error while it may still come; each waits here, since the change that named it was
-- received, and leaves by itself when the record arrives. Deleted records wait for nothing.
-- The rows of the records in `scope` (keys `<record_type>:<record_id>`; revorch/lifecycle/
-- keyed_tables.py, waiting_references_touched.sql says which).
WITH named_all AS (
    SELECT 'contact' AS record_type, id AS record_id, 'company_id' AS reference,
           'company' AS missing_type, company_id AS missing_id
    FROM contacts WHERE NOT _deleted
    UNION ALL SELECT 'contact', id, 'owner_id', 'owner', owner_id FROM contacts WHERE NOT _deleted
    UNION ALL SELECT 'company', id, 'owner_id', 'owner', owner_id FROM companies WHERE NOT _deleted
    UNION ALL SELECT 'deal', id, 'company_id', 'company', company_id FROM deals WHERE NOT _deleted
    UNION ALL SELECT 'deal', id, 'contact_id', 'contact', contact_id FROM deals WHERE NOT _deleted
    UNION ALL SELECT 'deal', id, 'owner_id', 'owner', owner_id FROM deals WHERE NOT _deleted
    UNION ALL SELECT 'activity', id, 'contact_id', 'contact', contact_id
              FROM activities WHERE NOT _deleted
    UNION ALL SELECT 'activity', id, 'company_id', 'company', company_id
              FROM activities WHERE NOT _deleted
    UNION ALL SELECT 'activity', id, 'deal_id', 'deal', deal_id FROM activities WHERE NOT _deleted
    UNION ALL SELECT 'activity', id, 'owner_id', 'owner', owner_id FROM activities WHERE NOT _deleted
    UNION ALL SELECT 'ticket', id, 'company_id', 'company', company_id FROM tickets WHERE NOT _deleted
    UNION ALL SELECT 'ticket', id, 'contact_id', 'contact', contact_id FROM tickets WHERE NOT _deleted
    UNION ALL SELECT 'ticket', id, 'owner_id', 'owner', owner_id FROM tickets WHERE NOT _deleted
    UNION ALL SELECT 'subscription', id, 'company_id', 'company', company_id
              FROM subscriptions WHERE NOT _deleted
    UNION ALL SELECT 'subscription', id, 'deal_id', 'deal', deal_id
              FROM subscriptions WHERE NOT _deleted
),
named AS (
    SELECT * FROM named_all WHERE record_type || ':' || record_id IN (SELECT key FROM scope)
),
known AS (
    SELECT 'owner' AS object_type, id FROM owners
    UNION ALL SELECT 'company', id FROM companies
    UNION ALL SELECT 'contact', id FROM contacts
    UNION ALL SELECT 'deal', id FROM deals
),
missing AS (
    SELECT n.* FROM named AS n
    ANTI JOIN known AS k ON k.object_type = n.missing_type AND k.id = n.missing_id
    WHERE n.missing_id IS NOT NULL
)
SELECT m.*, min(c.ingested_at) AS waiting_since
FROM missing AS m
JOIN change_log AS c
  ON c.object_type = m.record_type AND c.object_id = m.record_id
 AND (c.properties->>m.reference) = m.missing_id
GROUP BY ALL
