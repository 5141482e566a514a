-- Open pipeline: deals not yet closed (stage other than closedwon and closedlost), counted and
-- valued by deal stage and deal type. '(all)' rows total over the stage, the type, or both.
-- pipeline_value is the sum of amount; deals without an amount count in open_deals and
-- deals_without_amount, and add nothing to the value.
CREATE OR REPLACE VIEW metrics.pipeline AS
WITH stage_order(deal_stage, stage_order) AS (
    VALUES ('appointmentscheduled', 1), ('qualifiedtobuy', 2), ('presentationscheduled', 3),
           ('decisionmakerboughtin', 4), ('contractsent', 5)
),
open_deals AS (
    SELECT stage AS deal_stage, coalesce(deal_type, '(unknown)') AS deal_type, amount
    FROM deals
    WHERE NOT _deleted AND stage IS NOT NULL AND stage NOT IN ('closedwon', 'closedlost')
)
SELECT CASE WHEN grouping(d.deal_stage) = 1 THEN '(all)' ELSE d.deal_stage END AS deal_stage,
       CASE WHEN grouping(d.deal_type) = 1 THEN '(all)' ELSE d.deal_type END AS deal_type,
       CASE WHEN grouping(d.deal_stage) = 0 THEN any_value(o.stage_order) END AS stage_order,
       count(*) AS open_deals,
       coalesce(sum(d.amount), 0) AS pipeline_value,
       count(*) FILTER (WHERE d.amount IS NULL) AS deals_without_amount
FROM open_deals AS d
LEFT JOIN stage_order AS o USING (deal_stage)
GROUP BY GROUPING SETS ((d.deal_stage, d.deal_type), (d.deal_stage), (d.deal_type), ())
ORDER BY grouping(d.deal_stage) DESC, stage_order NULLS LAST, deal_stage,
         grouping(d.deal_type) DESC, deal_type;
