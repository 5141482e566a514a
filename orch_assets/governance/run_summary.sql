-- What one run did, operationally and for the business. $run_id is the Dagster run.
WITH loads AS (SELECT load_id FROM landing_batches WHERE run_id = $run_id),
moved AS (
    SELECT t.to_stage FROM stages.stage_transitions AS t
    JOIN change_log AS c USING (event_id)
    WHERE c.load_id IN (SELECT load_id FROM loads)
),
touched AS (
    SELECT DISTINCT entity_type, entity_id FROM governance.actions
    WHERE proposed_run_id = $run_id
)
SELECT
    (SELECT coalesce(sum(received), 0) FROM landing_batches WHERE run_id = $run_id)
        AS events_received,
    (SELECT coalesce(sum(quarantined), 0) FROM landing_batches WHERE run_id = $run_id)
        AS events_quarantined,
    (SELECT count(*) FROM agents.decisions WHERE run_id = $run_id) AS decisions,
    (SELECT coalesce(sum(cost_usd), 0) FROM agents.cost_ledger WHERE run_id = $run_id)
        AS agent_cost_usd,
    (SELECT count(*) FROM governance.actions WHERE proposed_run_id = $run_id) AS actions_proposed,
    (SELECT count(*) FROM governance.audit_log WHERE run_id = $run_id AND event = 'verdict'
        AND (detail->>'verdict') = 'allow') AS verdicts_allow,
    (SELECT count(*) FROM governance.audit_log WHERE run_id = $run_id AND event = 'verdict'
        AND (detail->>'verdict') = 'approve') AS verdicts_approve,
    (SELECT count(*) FROM governance.audit_log WHERE run_id = $run_id AND event = 'verdict'
        AND (detail->>'verdict') = 'forbid') AS verdicts_forbid,
    (SELECT count(*) FROM governance.audit_log WHERE run_id = $run_id AND event = 'withheld')
        AS actions_withheld,
    (SELECT count(*) FROM governance.audit_log WHERE run_id = $run_id AND event = 'dispatched')
        AS actions_sent,
    (SELECT count(*) FROM governance.audit_log WHERE run_id = $run_id
        AND event IN ('dispatch_failed', 'output_refused')) AS errors,
    (SELECT count(*) FROM governance.actions WHERE status = 'pending_approval')
        AS approvals_pending,
    (SELECT count(*) FROM moved) AS stage_moves,
    (SELECT count(*) FROM moved WHERE to_stage IN ('sql', 'opportunity', 'customer'))
        AS conversions,
    (SELECT coalesce(sum(d.amount), 0) FROM touched AS t JOIN deals AS d
        ON t.entity_type = 'deal' AND d.id = t.entity_id) AS pipeline_value_touched,
    (SELECT coalesce(sum(s.arr), 0) FROM touched AS t JOIN subscriptions AS s
        ON t.entity_type = 'subscription' AND s.id = t.entity_id) AS arr_touched
