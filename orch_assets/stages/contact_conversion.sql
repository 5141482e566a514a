-- Conversion to the next stage of the contact funnel, in percent: of the contacts that reached
-- $stage, the share that reached $next_stage (stages.contact_funnel, built by stages/leads).
SELECT round(100 * (SELECT reached FROM stages.contact_funnel WHERE stage = $next_stage)
             / nullif((SELECT reached FROM stages.contact_funnel WHERE stage = $stage), 0), 1)
       AS conversion_to_next_pct
