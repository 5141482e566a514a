-- Stage velocity: how long contacts and accounts stay in each stage, in days.
--
-- A stay starts with the move into a stage and ends with the entity's next move (the
-- consecutive rows of stage_transitions, by seq: metrics.stage_stays, stage_stays.sql). Median
-- and p90 are over completed stays only, interpolated between neighbouring values
-- (quantile_cont). Stays still open at the clock are not in them, because their length is not
-- known yet: they are counted in open_stays, with how long they have lasted so far
-- (median_open_days).
CREATE OR REPLACE VIEW metrics.stage_velocity AS
WITH durations AS (
    SELECT entity_type, stage,
           (epoch(left_at) - epoch(entered_at)) / 86400.0 AS days,
           (epoch(clock_now()) - epoch(entered_at)) / 86400.0 AS open_days,
           left_at IS NULL AS still_open
    FROM metrics.stage_stays
)
SELECT entity_type, stage,
       count(*) FILTER (WHERE NOT still_open) AS completed_stays,
       median(days) FILTER (WHERE NOT still_open) AS median_days,
       quantile_cont(days, 0.9) FILTER (WHERE NOT still_open) AS p90_days,
       avg(days) FILTER (WHERE NOT still_open) AS avg_days,
       count(*) FILTER (WHERE still_open) AS open_stays,
       median(open_days) FILTER (WHERE still_open) AS median_open_days
FROM durations
GROUP BY ALL
ORDER BY ALL;
