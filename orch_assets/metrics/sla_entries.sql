-- Every time a contact entered a stage that has a first-touch SLA (config/lifecycle.yaml,
-- handoffs.sla), with its first sales touch and whether the SLA was met
-- (metrics.sla_first_touches, sla_first_touches.sql, has the entries and their first touch).
-- Status, at the clock:
--   met      the first touch came at or before due_at (entered_at + the stage's hours)
--   missed   due_at has passed at the clock and no touch came by then (late or never)
--   pending  no touch yet and due_at is still ahead of the clock
CREATE OR REPLACE VIEW metrics.sla_entries AS
SELECT contact_id, stage, seq, entered_at, sla_hours, due_at, first_touch_at,
       (epoch(first_touch_at) - epoch(entered_at)) / 3600.0 AS hours_to_first_touch,
       CASE WHEN first_touch_at <= due_at THEN 'met'
            WHEN due_at <= clock_now() THEN 'missed'
            ELSE 'pending' END AS status
FROM metrics.sla_first_touches;
