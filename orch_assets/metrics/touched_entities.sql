-- The contacts and accounts ('contact:<id>', 'company:<id>') whose moves the state machines
-- recomputed since the last run (the temp table `span`).
SELECT CASE table_name WHEN 'stages/contact_lifecycle' THEN 'contact:' ELSE 'company:' END
       || key
FROM stages.keyed_refreshes
WHERE table_name IN ('stages/contact_lifecycle', 'stages/account_lifecycle')
  AND (load_id > (SELECT since FROM span)
       OR as_of BETWEEN (SELECT previous_as_of FROM span) AND (SELECT as_of FROM span))
