"""A short funnel summary of the state store, for the terminal."""

from __future__ import annotations

import duckdb

LIFECYCLE = ["lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer"]

# Contacts that ever reached each lifecycle stage, from the change log (not only the current one).
REACHED_SQL = """
SELECT properties->>'lifecycle_stage' AS stage, count(DISTINCT object_id) AS contacts
FROM change_log
WHERE object_type = 'contact' AND json_exists(properties, '$.lifecycle_stage')
GROUP BY stage
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
    reached = dict(conn.execute(REACHED_SQL).fetchall())
    lines = ["Funnel (contacts that reached each stage):"]
    previous = None
    for stage in LIFECYCLE:
        count = reached.get(stage, 0)
        rate = f"  ({count / previous:.1%} of previous)" if previous else ""
        lines.append(f"  {stage:<24}{count:>10,}{rate}")
        previous = count or None
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
