-- Revorch state store, version 6: one clock for every time rule (revorch/clock.py).
-- clock_now() is the wall clock unless the connection set the variable revorch_clock to
-- 'data' (the newest change received, for replays) or to a fixed instant (tests, backtests).
-- The wall clock never runs behind the newest change: ingestion accepts changes dated up to a
-- day ahead (a source's clock a little fast), and an age must not come out negative.
CREATE MACRO clock_now() AS (
    CASE coalesce(getvariable('revorch_clock'), 'wall')
        WHEN 'wall' THEN greatest(now(), data_clock())
        WHEN 'data' THEN data_clock()
        ELSE CAST(getvariable('revorch_clock') AS TIMESTAMPTZ)
    END
);

-- Days in stage count up to the rule clock (it read the data clock before), and a contact
-- deleted in the CRM is in no lifecycle stage view (stages.leads, mqls, sqls), as it is in no
-- handoff or agent input.
CREATE OR REPLACE MACRO contacts_in_stage(stage_name) AS TABLE
SELECT s.entity_id AS contact_id, c.first_name, c.last_name, c.email, c.company_id, c.owner_id,
       c.lead_source, s.entered_at, date_diff('day', s.entered_at, clock_now()) AS days_in_stage,
       s.decided_by, s.rule, s.reason
FROM stages.entity_stages AS s
JOIN contacts AS c ON c.id = s.entity_id
WHERE s.entity_type = 'contact' AND s.stage = stage_name AND NOT c._deleted;
