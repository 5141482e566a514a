-- The contacts whose rows may differ since the last run (the temp table `span`): the ones the
-- contact state machine recomputed. It recomputes every contact whose own record changed (lead
-- source, deletion) and every contact a changed deal or activity names, or ever named.
SELECT key FROM stages.keyed_refreshes
WHERE table_name = 'stages/contact_lifecycle'
  AND (load_id > (SELECT since FROM span)
       OR as_of BETWEEN (SELECT previous_as_of FROM span) AND (SELECT as_of FROM span))
