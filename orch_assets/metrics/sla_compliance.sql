-- First-touch SLA compliance per stage, and over all SLA stages (stage = '(all)'):
-- compliance = met / (met + missed). Pending entries, still inside their window at the data
-- clock, are in neither: they are not yet a success or a failure.
CREATE OR REPLACE VIEW metrics.sla_compliance AS
SELECT CASE WHEN grouping(stage) = 1 THEN '(all)' ELSE stage END AS stage,
       count(*) AS entries,
       count(*) FILTER (WHERE status = 'met') AS met,
       count(*) FILTER (WHERE status = 'missed') AS missed,
       count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'met')
           / nullif(count(*) FILTER (WHERE status IN ('met', 'missed')), 0) AS compliance,
       median(hours_to_first_touch) AS median_hours_to_first_touch
FROM metrics.sla_entries
GROUP BY GROUPING SETS ((stage), ())
ORDER BY grouping(stage), stage;
