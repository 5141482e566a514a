-- The records whose waiting may differ since the last run (the temp table `span`): the record
-- changed (what it names, or its deletion), or a record it waits for arrived.
WITH changed AS (
    SELECT DISTINCT object_type, object_id FROM change_log
    WHERE load_id > (SELECT since FROM span) AND load_id <= (SELECT upto FROM span)
)
SELECT object_type || ':' || object_id FROM changed
UNION
SELECT w.record_type || ':' || w.record_id FROM stages.waiting_references AS w
SEMI JOIN changed AS c ON c.object_type = w.missing_type AND c.object_id = w.missing_id
