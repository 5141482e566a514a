-- One row per randomized (playbook, entity) and outcome: its arm, its exposure, the outcome
-- read at a fixed horizon after that exposure, and a covariate measured before it (activity
-- in the 30 days before exposure, or the amount at stake). Only entities whose horizon has
-- passed by the start of the clock day (mature_by) are `mature`, so a unit's outcome never
-- changes once it counts, and the read-out changes only with the day or the mature set (uplift.py).
CREATE OR REPLACE TABLE metrics.playbook_units AS
WITH a AS (
    SELECT * FROM governance.holdout_assignments WHERE randomized
),
ranks AS (
    SELECT * FROM (VALUES ('lead', 1), ('mql', 2), ('sql', 3), ('opportunity', 4),
                          ('customer', 5)) AS r(stage, rank)
),
contact_moves AS (
    SELECT a.playbook, a.entity_id, a.exposed_at, t.transitioned_at, coalesce(r.rank, 0) AS rank
    FROM a
    JOIN stages.stage_transitions AS t ON t.entity_type = 'contact' AND t.entity_id = a.entity_id
    LEFT JOIN ranks AS r ON r.stage = t.to_stage
    WHERE a.entity_type = 'contact'
),
at_exposure AS (
    SELECT playbook, entity_id, arg_max(rank, transitioned_at) AS rank_at_exposure
    FROM contact_moves WHERE transitioned_at <= exposed_at GROUP BY ALL
),
progressed AS (
    SELECT m.playbook, m.entity_id, min(m.transitioned_at) AS progressed_at
    FROM contact_moves AS m
    LEFT JOIN at_exposure AS e USING (playbook, entity_id)
    WHERE m.transitioned_at > m.exposed_at AND m.rank > coalesce(e.rank_at_exposure, 0)
    GROUP BY ALL
),
prior_activity AS (
    -- One equi-join per entity type: an OR of the two keys would make DuckDB compare every
    -- exposure with every activity (123.7 CPU s against 0.27 s at 100k contacts).
    SELECT a.playbook, a.entity_type, a.entity_id, count(v.id) AS activities
    FROM a
    LEFT JOIN activities AS v
      ON v.contact_id = a.entity_id AND NOT v._deleted
     AND v.activity_at > a.exposed_at - INTERVAL 30 DAY AND v.activity_at <= a.exposed_at
    WHERE a.entity_type = 'contact'
    GROUP BY ALL
    UNION ALL
    SELECT a.playbook, a.entity_type, a.entity_id, count(v.id) AS activities
    FROM a
    LEFT JOIN activities AS v
      ON v.deal_id = a.entity_id AND NOT v._deleted
     AND v.activity_at > a.exposed_at - INTERVAL 30 DAY AND v.activity_at <= a.exposed_at
    WHERE a.entity_type = 'deal'
    GROUP BY ALL
),
contact_units AS (
    SELECT a.playbook, a.entity_type, a.entity_id, a.arm, a.exposed_at, $horizon_days AS horizon_days,
           'next_stage' AS outcome,
           CASE WHEN p.progressed_at <= a.exposed_at + to_days($horizon_days) THEN 1.0 ELSE 0.0 END
               AS value,
           CAST(coalesce(x.activities, 0) AS DOUBLE) AS covariate
    FROM a
    LEFT JOIN progressed AS p USING (playbook, entity_id)
    LEFT JOIN prior_activity AS x USING (playbook, entity_type, entity_id)
    WHERE a.entity_type = 'contact'
    UNION ALL
    -- Time to the next stage, capped at the horizon (entities that did not move count the
    -- whole horizon): a restricted mean, defined for every unit.
    SELECT a.playbook, a.entity_type, a.entity_id, a.arm, a.exposed_at, $horizon_days,
           'days_to_next_stage',
           least(coalesce(epoch(p.progressed_at - a.exposed_at) / 86400.0, $horizon_days),
                 $horizon_days),
           CAST(coalesce(x.activities, 0) AS DOUBLE)
    FROM a
    LEFT JOIN progressed AS p USING (playbook, entity_id)
    LEFT JOIN prior_activity AS x USING (playbook, entity_type, entity_id)
    WHERE a.entity_type = 'contact'
),
deal_units AS (
    SELECT a.playbook, a.entity_type, a.entity_id, a.arm, a.exposed_at, $horizon_days,
           'won',
           CASE WHEN d.stage = 'closedwon' AND d.closed_at > a.exposed_at
                     AND d.closed_at <= a.exposed_at + to_days($horizon_days) THEN 1.0
                ELSE 0.0 END,
           CAST(coalesce(x.activities, 0) AS DOUBLE)
    FROM a
    JOIN deals AS d ON d.id = a.entity_id
    LEFT JOIN prior_activity AS x USING (playbook, entity_type, entity_id)
    WHERE a.entity_type = 'deal'
),
subscription_units AS (
    SELECT a.playbook, a.entity_type, a.entity_id, a.arm, a.exposed_at, $renewal_horizon_days,
           'renewed',
           CASE WHEN EXISTS (
               SELECT 1 FROM subscriptions AS r
               WHERE r.renewal_of = a.entity_id AND NOT r._deleted
                 AND r.start_date <= CAST(a.exposed_at + to_days($renewal_horizon_days) AS DATE))
                THEN 1.0 ELSE 0.0 END,
           coalesce(s.arr, 0.0)
    FROM a
    JOIN subscriptions AS s ON s.id = a.entity_id
    WHERE a.entity_type = 'subscription'
    UNION ALL
    -- Expansion ARR: won expansion deals of the account closed within the horizon.
    SELECT a.playbook, a.entity_type, a.entity_id, a.arm, a.exposed_at, $renewal_horizon_days,
           'expansion_arr',
           coalesce((SELECT sum(d.amount) FROM deals AS d
                     WHERE d.company_id = s.company_id AND d.deal_type = 'expansion'
                       AND d.stage = 'closedwon' AND NOT d._deleted
                       AND d.closed_at > a.exposed_at
                       AND d.closed_at <= a.exposed_at + to_days($renewal_horizon_days)), 0.0),
           coalesce(s.arr, 0.0)
    FROM a
    JOIN subscriptions AS s ON s.id = a.entity_id
    WHERE a.entity_type = 'subscription'
)
SELECT u.*,
       (u.exposed_at + to_days(CAST(u.horizon_days AS INTEGER)))
           <= CAST($mature_by AS TIMESTAMPTZ) AS mature
FROM (SELECT * FROM contact_units UNION ALL SELECT * FROM deal_units
      UNION ALL SELECT * FROM subscription_units) AS u
ORDER BY playbook, outcome, entity_type, entity_id
