-- Contacts in one stage now, and the median days they have been in it.
SELECT count(*) AS "count", round(median(days_in_stage), 1) AS median_days_in_stage
FROM contacts_in_stage($stage)
