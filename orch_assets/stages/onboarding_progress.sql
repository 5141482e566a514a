CREATE OR REPLACE VIEW stages.onboarding_progress AS
SELECT *,
       CASE WHEN activated_at IS NOT NULL THEN 'activated'
            WHEN clock_now() > due_at THEN 'overdue'
            ELSE 'in_progress' END AS status
FROM stages.onboarding
