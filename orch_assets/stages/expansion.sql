-- Accounts ready to grow: nearly every seat in use, or an expansion deal already open.
CREATE OR REPLACE VIEW stages.expansion AS
SELECT h.company_id, h.subscription_id, h.plan, h.arr, h.seats, h.seats_active, h.utilization,
       d.id AS open_expansion_deal_id, d.amount AS expansion_amount,
       CASE WHEN d.id IS NOT NULL THEN 'open_expansion_deal' ELSE 'seat_utilization' END AS signal
FROM stages.adoption_health AS h
LEFT JOIN deals AS d
       ON d.company_id = h.company_id AND d.deal_type = 'expansion'
      AND d.stage NOT IN ('closedwon', 'closedlost') AND NOT d._deleted
WHERE h.utilization >= $expansion_utilization OR d.id IS NOT NULL
