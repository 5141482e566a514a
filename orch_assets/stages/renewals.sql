-- Active subscriptions inside their renewal window, with their health.
CREATE OR REPLACE VIEW stages.renewals AS
SELECT h.*, date_diff('day', clock_now(), h.end_date) AS days_to_renewal,
       h.health_band = 'at_risk' AS at_risk
FROM stages.adoption_health AS h
WHERE h.end_date <= (clock_now() + to_days(CAST($renewal_window_days AS INTEGER)))::DATE
