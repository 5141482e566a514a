-- Every arr a subscription was given, as the change log has it: the loads after $since up to
-- $upto (revenue_retention appends each run's new loads; the change log is append-only), so
-- metrics.revenue_retention_accounts reads these few rows instead of the whole change log.
SELECT object_id AS subscription_id, occurred_at, event_id,
       CAST((properties ->> 'arr') AS DOUBLE) AS arr
FROM change_log
WHERE object_type = 'subscription' AND (properties ->> 'arr') IS NOT NULL
  AND load_id > $since AND load_id <= $upto
