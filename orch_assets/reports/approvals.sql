-- Approvals and how long they waited. metrics.approval_waits: every action the policy held
-- for a person, with the first review that closed it (approved, rejected or expired, from
-- governance.reviews) and the hours from its proposal to that review, or to the clock while
-- it still waits. metrics.approvals: per action type and '(all)', how many were asked,
-- approved, rejected, expired and still waiting, the median and p90 hours to a decision
-- (decided ones only) and the age of the oldest one waiting.
-- proposed_at is on Revorch's clock and reviews on the wall clock: with a replayed data clock
-- (REVORCH_CLOCK=data) the hours mean nothing.
CREATE OR REPLACE VIEW metrics.approval_waits AS
WITH closed AS (
    SELECT action_id,
           arg_min(event, recorded_at) AS decision,
           arg_min(actor, recorded_at) AS decided_by,
           min(recorded_at) AS decided_at
    FROM governance.reviews
    WHERE event IN ('approved', 'rejected', 'expired')
    GROUP BY action_id
)
SELECT a.action_id, a.action_type, a.source, a.entity_type, a.entity_id, a.proposed_at,
       a.status, c.decision, c.decided_by, c.decided_at,
       c.decided_at IS NULL AS waiting,
       (epoch(coalesce(c.decided_at, clock_now())) - epoch(a.proposed_at)) / 3600.0
           AS waited_hours
FROM governance.actions AS a
LEFT JOIN closed AS c USING (action_id)
WHERE a.verdict = 'approve' OR a.status = 'pending_approval' OR c.action_id IS NOT NULL;

CREATE OR REPLACE VIEW metrics.approvals AS
SELECT CASE WHEN grouping(action_type) = 1 THEN '(all)' ELSE action_type END AS action_type,
       count(*) AS asked,
       count(*) FILTER (WHERE decision = 'approved') AS approved,
       count(*) FILTER (WHERE decision = 'rejected') AS rejected,
       count(*) FILTER (WHERE decision = 'expired') AS expired,
       count(*) FILTER (WHERE waiting) AS waiting,
       median(waited_hours) FILTER (WHERE NOT waiting) AS median_hours_to_decision,
       quantile_cont(waited_hours, 0.9) FILTER (WHERE NOT waiting) AS p90_hours_to_decision,
       max(waited_hours) FILTER (WHERE waiting) AS oldest_waiting_hours
FROM metrics.approval_waits
GROUP BY GROUPING SETS ((action_type), ())
ORDER BY grouping(action_type) DESC, action_type;
