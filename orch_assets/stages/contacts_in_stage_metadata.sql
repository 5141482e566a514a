-- Contacts in one stage now, and the median days they have been in it (from epochs: a
-- calendar date_diff in a time zone costs ten times as much per row).
SELECT count(*) AS "count",
       round(median(epoch(clock_now()) - epoch(entered_at)) / 86400, 1) AS median_days_in_stage
FROM contacts_in_stage($stage)
