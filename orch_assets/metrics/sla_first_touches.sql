-- Every time a contact in `scope` entered a stage that has a first-touch SLA
-- (config/lifecycle.yaml, handoffs.sla), with when it is due and its first sales touch: the
-- earliest activity of a touch type (handoffs.sla.touch_activities) for the contact at or
-- after the entry. revorch/lifecycle/keyed_tables.py keeps metrics.sla_first_touches by
-- contact (touched_contacts.sql says which); metrics.sla_entries reads it at the clock.
-- A contact that entered a stage twice (recycled) has two entries. Deleted contacts are left out.
-- $sla_stages, $sla_hours and $touch_activities are written in from the config by the asset.
WITH entries AS (
    SELECT t.entity_id AS contact_id, t.seq, t.to_stage AS stage, t.transitioned_at AS entered_at,
           $sla_hours[list_position($sla_stages, t.to_stage)] AS sla_hours
    FROM stages.stage_transitions AS t
    WHERE t.entity_type = 'contact' AND list_contains($sla_stages, t.to_stage)
      AND t.entity_id NOT IN (SELECT id FROM contacts WHERE _deleted)
      AND t.entity_id IN (SELECT key FROM scope)
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
SELECT d.contact_id, d.stage, d.seq, d.entered_at, d.sla_hours, d.due_at, f.first_touch_at
FROM due AS d
LEFT JOIN first_touches AS f USING (contact_id, seq)
