-- The automation-estate audit (docs/estate.md): what each imported automation did (activity),
-- what followed for the records it touched against comparable records it did not (outcome),
-- where two automations overwrite each other (conflicts), and a recommendation.
--
-- A change is attributed to an automation when its change-log `source` is the automation's
-- source_key. Parameters: $window_minutes (two writes this close are a conflict),
-- $horizon_days (progress counted within), $min_episodes (fewer touched stays: not measured),
-- $z (normal quantile of the interval), $revorch_fields (fields whose decision Revorch owns).
CREATE SCHEMA IF NOT EXISTS metrics;

-- Every property an automation set: one row per (change, property).
CREATE OR REPLACE VIEW estate.attributed_changes AS
SELECT a.automation_id, c.event_id, c.object_type, c.object_id, c.occurred_at,
       p.key AS property, p.value ->> '$' AS value
FROM change_log AS c
JOIN estate.automations AS a ON a.source_key = c.source,
     json_each(c.properties) AS p;

-- Activity-level value: changes made, records and fields touched.
CREATE OR REPLACE VIEW estate.automation_activity AS
SELECT a.automation_id,
       count(DISTINCT c.event_id) AS changes,
       count(DISTINCT c.object_type || ':' || c.object_id) AS records_touched,
       count(DISTINCT c.property) AS fields_touched,
       min(c.occurred_at) AS first_change_at,
       max(c.occurred_at) AS last_change_at
FROM estate.automations AS a
LEFT JOIN estate.attributed_changes AS c USING (automation_id)
GROUP BY a.automation_id;

-- A contact's stays in funnel stages (from the state machine's transitions): progressed when it
-- reached a later funnel stage within the horizon. Stays that began less than a horizon before
-- the newest change are left out: their outcome is not known yet.
CREATE OR REPLACE VIEW estate.stage_stays AS
WITH funnel(stage, stage_order) AS (
    VALUES ('lead', 1), ('mql', 2), ('sql', 3), ('opportunity', 4), ('customer', 5)
),
moves AS (
    SELECT t.entity_id AS contact_id, t.to_stage AS stage, f.stage_order, t.transitioned_at,
           t.rule AS entered_by, lead(t.transitioned_at) OVER w AS left_at
    FROM stages.stage_transitions AS t
    JOIN funnel AS f ON f.stage = t.to_stage
    WHERE t.entity_type = 'contact'
    WINDOW w AS (PARTITION BY t.entity_id ORDER BY t.seq)
),
data_end AS (SELECT max(occurred_at) AS at FROM change_log)
SELECT m.contact_id, m.stage, m.transitioned_at AS entered_at, m.left_at, m.entered_by,
       date_trunc('month', m.transitioned_at) AS period,
       EXISTS (
           SELECT 1 FROM moves AS later
           WHERE later.contact_id = m.contact_id AND later.stage_order > m.stage_order
             AND later.transitioned_at > m.transitioned_at
             AND later.transitioned_at <= m.transitioned_at + to_days($horizon_days)
       ) AS progressed
FROM moves AS m, data_end
WHERE m.stage <> 'customer'
  AND m.transitioned_at + to_days($horizon_days) <= data_end.at;

-- Outcome-level value: the progress rate of the stays an automation touched (a change to the
-- contact while it was in the stage) against the stays it did not touch in the same cell:
-- same stage, entered the same way (the rule or CRM field that moved it: a new lead and a
-- recycled one differ) and in the same month; weighted by the touched stays of each cell.
CREATE OR REPLACE VIEW estate.automation_outcomes AS
WITH touched AS (
    SELECT DISTINCT c.automation_id, s.contact_id, s.stage, s.entered_at, s.entered_by, s.period,
           s.progressed
    FROM estate.attributed_changes AS c
    JOIN estate.stage_stays AS s
      ON c.object_type = 'contact' AND s.contact_id = c.object_id
     AND c.occurred_at >= s.entered_at
     AND c.occurred_at < least(coalesce(s.left_at, 'infinity'::TIMESTAMPTZ),
                               s.entered_at + to_days($horizon_days))
),
cells AS (
    SELECT stage, entered_by, period, count(*) AS stays, count(*) FILTER (progressed) AS progressed
    FROM estate.stage_stays GROUP BY ALL
),
per_cell AS (
    SELECT t.automation_id, t.stage, t.entered_by, t.period,
           count(*) AS n1, count(*) FILTER (t.progressed) AS s1,
           any_value(c.stays) - count(*) AS n0,
           any_value(c.progressed) - count(*) FILTER (t.progressed) AS s0
    FROM touched AS t JOIN cells AS c USING (stage, entered_by, period)
    GROUP BY ALL
),
matched AS (
    -- Cells with no untouched stay have nothing to compare with and are left out.
    SELECT *, s1 / n1 AS p1, s0 / n0 AS p0,
           -- Rates shrunk by half a success, so a cell of all-or-none still has a variance.
           (s1 + 0.5) / (n1 + 1) AS q1, (s0 + 0.5) / (n0 + 1) AS q0
    FROM per_cell WHERE n0 > 0
)
SELECT a.automation_id,
       coalesce((SELECT count(*) FROM touched AS t WHERE t.automation_id = a.automation_id), 0)
           AS touched_stays,
       coalesce(sum(m.n1), 0) AS matched_stays,
       sum(m.s1) / sum(m.n1) AS progress_rate_touched,
       sum(m.n1 * m.p0) / sum(m.n1) AS progress_rate_comparable,
       sum(m.n1 * (m.p1 - m.p0)) / sum(m.n1) AS lift,
       sqrt(sum(m.n1 * m.n1 * (m.q1 * (1 - m.q1) / m.n1 + m.q0 * (1 - m.q0) / m.n0)))
           / sum(m.n1) AS lift_se
FROM estate.automations AS a
LEFT JOIN matched AS m USING (automation_id)
GROUP BY a.automation_id;

-- Conflicts: an automation overwrote, within the window, a value another automation had just
-- written to the same field of the same record; a flip-flop puts back the value before that.
CREATE OR REPLACE VIEW estate.automation_conflicts AS
WITH ordered AS (
    SELECT *,
           lag(automation_id) OVER w AS prev_automation,
           lag(value) OVER w AS prev_value,
           lag(occurred_at) OVER w AS prev_at,
           lag(automation_id, 2) OVER w AS prev2_automation,
           lag(value, 2) OVER w AS prev2_value
    FROM estate.attributed_changes
    WINDOW w AS (PARTITION BY object_type, object_id, property ORDER BY occurred_at, event_id)
)
SELECT least(automation_id, prev_automation) AS automation_a,
       greatest(automation_id, prev_automation) AS automation_b,
       object_type, property,
       count(DISTINCT object_id) AS records,
       count(*) AS overwrites,
       count(*) FILTER (prev2_automation = automation_id AND prev2_value IS NOT DISTINCT FROM value)
           AS flip_flops,
       min(occurred_at) AS first_at,
       max(occurred_at) AS last_at
FROM ordered
WHERE prev_automation <> automation_id
  AND value IS DISTINCT FROM prev_value
  AND occurred_at - prev_at <= to_minutes($window_minutes)
GROUP BY ALL;

-- The ranked list for analysts: keep, migrate into Revorch, or retire, with the evidence.
CREATE OR REPLACE VIEW metrics.automation_estate AS
WITH conflicts AS (
    SELECT automation_id,
           list(DISTINCT other ORDER BY other) AS conflicts_with,
           sum(records) AS conflicting_records,
           sum(flip_flops) AS flip_flops
    FROM (
        SELECT automation_a AS automation_id, automation_b AS other, records, flip_flops
        FROM estate.automation_conflicts
        UNION ALL
        SELECT automation_b, automation_a, records, flip_flops FROM estate.automation_conflicts
    )
    GROUP BY automation_id
),
scored AS (
    SELECT a.automation_id, a.name, a.platform, a.enabled, a.trigger, a.fields_written,
           coalesce(act.changes, 0) AS changes,
           coalesce(act.records_touched, 0) AS records_touched,
           act.last_change_at,
           o.touched_stays, o.matched_stays,
           o.progress_rate_touched, o.progress_rate_comparable, o.lift,
           o.lift - $z * o.lift_se AS lift_low,
           o.lift + $z * o.lift_se AS lift_high,
           o.lift * o.matched_stays AS extra_progressions,
           coalesce(c.conflicts_with, []) AS conflicts_with,
           coalesce(c.conflicting_records, 0) AS conflicting_records,
           coalesce(c.flip_flops, 0) AS flip_flops,
           len(list_intersect(a.fields_written, $revorch_fields)) > 0 AS writes_revorch_field,
           o.matched_stays >= $min_episodes AS measured
    FROM estate.automations AS a
    LEFT JOIN estate.automation_activity AS act USING (automation_id)
    LEFT JOIN estate.automation_outcomes AS o USING (automation_id)
    LEFT JOIN conflicts AS c USING (automation_id)
),
judged AS (
    SELECT *,
        CASE
            WHEN changes = 0 THEN 'retire'
            WHEN NOT measured THEN 'keep'
            WHEN lift_low > 0 AND (len(conflicts_with) > 0 OR writes_revorch_field) THEN 'migrate'
            WHEN lift_low > 0 THEN 'keep'
            ELSE 'retire'
        END AS recommendation,
        CASE
            WHEN changes = 0 THEN 'no change in the change log is attributed to it'
                || CASE WHEN enabled THEN '' ELSE ' (disabled)' END
            WHEN NOT measured THEN 'outcome not measured: ' || coalesce(matched_stays, 0)
                || ' matched contact stage stays (fewer than ' || $min_episodes
                || '); keep until it can be judged'
            ELSE printf('%.0f%% of the %d stays it touched progressed within %d days, against '
                        || '%.0f%% of comparable stays (lift %+.0f points, %.0f%% interval %+.0f to %+.0f)',
                        100 * progress_rate_touched, matched_stays, $horizon_days,
                        100 * progress_rate_comparable, 100 * lift, 100 * $confidence,
                        100 * lift_low, 100 * lift_high)
        END
        || CASE WHEN len(conflicts_with) > 0
                THEN printf('; overwrites %s on %d records within %d minutes (%d flip-flops)',
                            array_to_string(conflicts_with, ', '), conflicting_records,
                            $window_minutes, flip_flops)
                ELSE '' END
        || CASE WHEN writes_revorch_field THEN '; writes a field Revorch decides' ELSE '' END
        AS evidence
    FROM scored
)
SELECT row_number() OVER (
           ORDER BY CASE recommendation WHEN 'keep' THEN 1 WHEN 'migrate' THEN 2 ELSE 3 END,
                    extra_progressions DESC NULLS LAST, changes DESC, automation_id
       ) AS rank,
       automation_id, name, platform, enabled, recommendation, evidence,
       changes, records_touched, last_change_at, touched_stays, matched_stays,
       progress_rate_touched, progress_rate_comparable, lift, lift_low, lift_high,
       extra_progressions, conflicts_with, conflicting_records, flip_flops, trigger,
       fields_written
FROM judged
ORDER BY rank;
