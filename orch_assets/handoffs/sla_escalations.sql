-- First sales touch after a contact became MQL or SQL, against its SLA. A breach is escalated
-- to a manager of the owner's team (any manager if the team has none).
CREATE OR REPLACE TABLE handoffs.sla_escalations AS
WITH clock AS (SELECT clock_now() AS as_of),
entries AS (
    SELECT s.entity_id AS contact_id, s.stage, s.entered_at, c.owner_id,
           s.entered_at + to_hours(CAST($sla_hours[list_position($sla_stages, s.stage)] AS INTEGER))
               AS due_at
    FROM stages.entity_stages AS s JOIN contacts AS c ON c.id = s.entity_id
    WHERE s.entity_type = 'contact' AND list_contains($sla_stages, s.stage)
),
touches AS (
    SELECT e.contact_id, min(a.activity_at) AS first_touch_at
    FROM entries AS e
    JOIN activities AS a ON a.contact_id = e.contact_id
    WHERE list_contains($touch_activities, a.activity_type) AND a.activity_at >= e.entered_at
      AND NOT a._deleted
    GROUP BY e.contact_id
),
managers AS (
    SELECT id, team, row_number() OVER (PARTITION BY team ORDER BY id) AS rank
    FROM owners WHERE role = $escalate_to_role AND coalesce(is_active, true) AND NOT _deleted
),
judged AS (
    SELECT e.*, t.first_touch_at,
           CASE WHEN t.first_touch_at <= e.due_at THEN 'met'
                WHEN t.first_touch_at > e.due_at THEN 'late'
                WHEN (SELECT as_of FROM clock) > e.due_at THEN 'breached'
                ELSE 'pending' END AS status
    FROM entries AS e LEFT JOIN touches AS t USING (contact_id)
)
SELECT j.*,
       CASE WHEN j.status = 'breached'
            THEN coalesce(m.id, (SELECT min(id) FROM managers)) END AS escalate_to
FROM judged AS j
LEFT JOIN owners AS o ON o.id = j.owner_id
LEFT JOIN managers AS m ON m.team = o.team AND m.rank = 1
