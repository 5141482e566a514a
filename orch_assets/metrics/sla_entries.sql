-- Every time a contact entered a stage that has a first-touch SLA (config/lifecycle.yaml,
-- handoffs.sla), with its first sales touch and whether the SLA was met.
--
-- The first touch is the earliest activity of a touch type (handoffs.sla.touch_activities)
-- for the contact at or after the entry. Status:
--   met      the first touch came at or before due_at (entered_at + the stage's hours)
--   missed   due_at has passed at the clock and no touch came by then (late or never)
--   pending  no touch yet and due_at is still ahead of the clock
-- A contact that entered a stage twice (recycled) has two entries. Deleted contacts are left out.
-- $sla_stages, $sla_hours and $touch_activities are written in from the config by the asset.
CREATE OR REPLACE VIEW metrics.sla_entries AS
WITH entries AS (
    SELECT t.entity_id AS contact_id, t.seq, t.to_stage AS stage, t.transitioned_at AS entered_at,
           $sla_hours[list_position($sla_stages, t.to_stage)] AS sla_hours
    FROM stages.stage_transitions AS t
    WHERE t.entity_type = 'contact' AND list_contains($sla_stages, t.to_stage)
      AND t.entity_id NOT IN (SELECT id FROM contacts WHERE _deleted)
),
due AS (
    SELECT *, entered_at + to_microseconds(CAST(sla_hours * 3600000000 AS BIGINT)) AS due_at
    FROM entries
),
first_touches AS (
    SELECT d.contact_id, d.seq, min(a.activity_at) AS first_touch_at
    FROM due AS d
    JOIN activities AS a ON a.contact_id = d.contact_id AND a.activity_at >= d.entered_at
    WHERE list_contains($touch_activities, a.activity_type) AND NOT a._deleted
    GROUP BY ALL
)
SELECT d.contact_id, d.stage, d.seq, d.entered_at, d.sla_hours, d.due_at, f.first_touch_at,
       (epoch(f.first_touch_at) - epoch(d.entered_at)) / 3600.0 AS hours_to_first_touch,
       CASE WHEN f.first_touch_at <= d.due_at THEN 'met'
            WHEN d.due_at <= clock_now() THEN 'missed'
            ELSE 'pending' END AS status
FROM due AS d
LEFT JOIN first_touches AS f USING (contact_id, seq);
