"""A short summary of the state store for the terminal: the funnel, deals, customers, intake.

The funnel is ``metrics.funnel_conversion``'s (docs/metrics.md), so this summary, the
Monday report and the metric's plots in the Dagster UI show the same numbers.
"""

from __future__ import annotations

import duckdb

# The funnel is Revorch's: contacts as its stage machine places them (metrics.funnel_conversion,
# every lead source), the stages the product governs, not the CRM's lifecycle_stage labels.
# The two differ (a contact the CRM still calls a lead can be an MQL by engagement).
FUNNEL_HEADING = (
    "Funnel (contacts that reached each stage, as Revorch's stage machine places them):"
)

FUNNEL_SQL = """
SELECT stage, reached, conversion_to_next FROM metrics.funnel_conversion
WHERE lead_source = '(all)' ORDER BY stage_order
"""

DEALS_SQL = """
SELECT count(*) FILTER (WHERE stage NOT IN ('closedwon', 'closedlost')) AS open_deals,
       count(*) FILTER (WHERE stage = 'closedwon') AS won,
       count(*) FILTER (WHERE stage = 'closedlost') AS lost,
       coalesce(sum(amount) FILTER (WHERE stage NOT IN ('closedwon', 'closedlost')), 0) AS pipeline
FROM deals WHERE NOT _deleted
"""

ARR_SQL = """
SELECT coalesce(sum(arr), 0), count(*) FROM subscriptions WHERE status = 'active' AND NOT _deleted
"""

INTAKE_SQL = """
SELECT count(*), coalesce(sum(received), 0), coalesce(sum(loaded), 0),
       coalesce(sum(duplicates), 0), coalesce(sum(quarantined), 0)
FROM landing_batches
"""


def funnel_summary(conn: duckdb.DuckDBPyConnection) -> str:
    lines = [FUNNEL_HEADING]
    previous_rate = None
    for stage, reached, conversion_to_next in conn.execute(FUNNEL_SQL).fetchall():
        rate = f"  ({previous_rate:.1%} of previous)" if previous_rate is not None else ""
        lines.append(f"  {stage:<24}{reached:>10,}{rate}")
        previous_rate = conversion_to_next
    open_deals, won, lost, pipeline = conn.execute(DEALS_SQL).fetchone()
    win_rate = f"{won / (won + lost):.1%}" if won + lost else "n/a"
    arr, active = conn.execute(ARR_SQL).fetchone()
    lines.append(
        f"Deals: {open_deals:,} open (${pipeline:,.0f} pipeline), {won:,} won, {lost:,} lost "
        f"(win rate {win_rate})"
    )
    lines.append(f"Customers: {active:,} active subscriptions, ${arr:,.0f} ARR")
    batches, received, loaded, duplicates, quarantined = conn.execute(INTAKE_SQL).fetchone()
    lines.append(
        f"Intake: {batches:,} batches, {received:,} lines received = {loaded:,} loaded + "
        f"{duplicates:,} duplicates + {quarantined:,} quarantined"
    )
    return "\n".join(lines)
