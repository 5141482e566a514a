-- What each agent cost and what it produced: model spend from agents.cost_ledger (to date,
-- and in the 7 days up to the clock), decisions from agents.decisions, and the actions it
-- proposed and that were sent (governance.actions). cost_per_decision and
-- cost_per_action_sent divide the spend to date; NULL when there is nothing to divide by.
-- agent = '(all)' is the total.
CREATE OR REPLACE VIEW metrics.agent_cost AS
WITH clock AS (SELECT CAST(clock_now() AT TIME ZONE 'UTC' AS DATE) AS today),
costs AS (
    SELECT l.agent, sum(l.calls) AS model_calls, sum(l.cost_usd) AS cost_usd,
           coalesce(sum(l.cost_usd) FILTER (WHERE l.day > clock.today - 7), 0) AS cost_usd_7d
    FROM agents.cost_ledger AS l, clock
    GROUP BY l.agent
),
decisions AS (
    SELECT agent, count(*) AS decisions, count(*) FILTER (WHERE tier = 'llm') AS llm_decisions
    FROM agents.decisions GROUP BY agent
),
actions AS (
    SELECT source AS agent, count(*) AS actions_proposed,
           count(*) FILTER (WHERE status = 'sent') AS actions_sent
    FROM governance.actions GROUP BY source
),
per_agent AS (
    SELECT a.agent,
           coalesce(d.decisions, 0) AS decisions,
           coalesce(d.llm_decisions, 0) AS llm_decisions,
           coalesce(c.model_calls, 0) AS model_calls,
           coalesce(c.cost_usd, 0) AS cost_usd,
           coalesce(c.cost_usd_7d, 0) AS cost_usd_7d,
           coalesce(x.actions_proposed, 0) AS actions_proposed,
           coalesce(x.actions_sent, 0) AS actions_sent
    FROM (SELECT agent FROM decisions UNION SELECT agent FROM costs) AS a
    LEFT JOIN decisions AS d USING (agent)
    LEFT JOIN costs AS c USING (agent)
    LEFT JOIN actions AS x USING (agent)
),
with_total AS (
    SELECT * FROM per_agent
    UNION ALL
    SELECT '(all)', sum(decisions), sum(llm_decisions), sum(model_calls), sum(cost_usd),
           sum(cost_usd_7d), sum(actions_proposed), sum(actions_sent)
    FROM per_agent
)
SELECT agent,
       CAST(decisions AS BIGINT) AS decisions,
       CAST(llm_decisions AS BIGINT) AS llm_decisions,
       CAST(model_calls AS BIGINT) AS model_calls,
       cost_usd, cost_usd_7d,
       CAST(actions_proposed AS BIGINT) AS actions_proposed,
       CAST(actions_sent AS BIGINT) AS actions_sent,
       cost_usd / nullif(decisions, 0) AS cost_per_decision,
       cost_usd / nullif(actions_sent, 0) AS cost_per_action_sent
FROM with_total
ORDER BY agent = '(all)', agent;
