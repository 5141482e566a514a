-- Open leads with fresh buying signals move to the accelerated follow-up cadence.
CREATE OR REPLACE TABLE handoffs.follow_up_cadence AS
WITH clock AS (SELECT clock_now() AS as_of),
open_contacts AS (
    SELECT entity_id AS contact_id, stage FROM stages.entity_stages
    WHERE entity_type = 'contact' AND stage IN ('lead', 'mql', 'sql')
),
signals AS (
    SELECT contact_id, activity_at,
           CASE WHEN activity_type = 'web_visit' AND url LIKE '%/pricing%' THEN 'pricing_visit'
                ELSE activity_type END AS signal
    FROM activities
    WHERE NOT _deleted
      AND activity_at > (SELECT as_of FROM clock) - to_days(CAST($fresh_signal_days AS INTEGER))
),
fresh AS (
    SELECT contact_id, max(activity_at) AS signal_at, arg_max(signal, activity_at) AS signal,
           count(*) AS signals
    FROM signals WHERE list_contains($buying_signals, signal)
    GROUP BY contact_id
)
SELECT o.contact_id, o.stage, c.owner_id, 'accelerated' AS cadence, 'standard' AS previous_cadence,
       f.signal, f.signal_at, f.signals,
       f.signal_at + to_days(CAST($accelerated_days AS INTEGER)) AS next_touch_due_at,
       'fresh buying signal: ' || f.signal AS reason
FROM open_contacts AS o
JOIN fresh AS f USING (contact_id)
JOIN contacts AS c ON c.id = o.contact_id
