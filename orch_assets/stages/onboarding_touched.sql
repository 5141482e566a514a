-- The deals whose onboarding may differ since the last run (the temp table `span`): the deal
-- changed, or a subscription that names (or ever named) it changed: its seats and activation.
-- A change to any owner may move every CSM assignment, so it touches every deal. Onboarding
-- does not read the clock (onboarding_progress does, as a view).
WITH changed AS (
    SELECT DISTINCT object_type, object_id FROM change_log
    WHERE load_id > (SELECT since FROM span) AND load_id <= (SELECT upto FROM span)
)
SELECT object_id FROM changed WHERE object_type = 'deal'
UNION
SELECT c.properties->>'deal_id' FROM change_log AS c
SEMI JOIN (SELECT * FROM changed WHERE object_type = 'subscription') AS t
    ON t.object_type = c.object_type AND t.object_id = c.object_id
WHERE c.object_type = 'subscription'
UNION
SELECT id FROM deals WHERE EXISTS (SELECT 1 FROM changed WHERE object_type = 'owner')
