"""The automation-estate audit's settings and its ranked list as text (docs/estate.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import duckdb


@dataclass(frozen=True)
class AuditSettings:
    """What the audit's SQL (orch_assets/estate/automation_estate.sql) is given."""

    window_minutes: int = 60  # two automations writing a field this close apart conflict
    horizon_days: int = 90  # a touched stage stay counts as progress within this
    min_episodes: int = 10  # fewer matched stays: outcome not measured, not judged
    confidence: float = 0.95
    # Fields whose decision Revorch owns (lifecycle, routing): an automation writing them is
    # a candidate to move into Revorch, where the decision is recorded and held out.
    revorch_fields: tuple[str, ...] = field(
        default=("lifecycle_stage", "lead_status", "owner_id", "stage")
    )

    def parameters(self) -> dict[str, object]:
        return {
            "window_minutes": self.window_minutes,
            "horizon_days": self.horizon_days,
            "min_episodes": self.min_episodes,
            "confidence": self.confidence,
            "z": round(NormalDist().inv_cdf(0.5 + self.confidence / 2), 6),
            "revorch_fields": list(self.revorch_fields),
        }


def estate_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Headline numbers: automations by recommendation, conflicts, refused import rows."""
    (refused,) = conn.execute("SELECT count(*) FROM estate.import_refusals").fetchone()
    if not _any_automation(conn):  # the audit reads the whole change log: not for nothing
        return dict.fromkeys(_COUNTS, 0) | {"import_rows_refused": refused}
    by = dict(
        conn.execute(
            "SELECT recommendation, count(*) FROM metrics.automation_estate GROUP BY ALL"
        ).fetchall()
    )
    (pairs,) = conn.execute(
        "SELECT count(DISTINCT (automation_a, automation_b)) FROM estate.automation_conflicts"
    ).fetchone()
    return {
        "automations": sum(by.values()),
        "keep": by.get("keep", 0),
        "migrate": by.get("migrate", 0),
        "retire": by.get("retire", 0),
        "conflicting_pairs": pairs,
        "import_rows_refused": refused,
    }


def estate_report(conn: duckdb.DuckDBPyConnection) -> str:
    """The ranked list, one automation per paragraph, with its evidence."""
    if not _any_automation(conn):
        return "No automation imported yet: `revorch estate import FILE --format ...`."
    rows = conn.execute(
        "SELECT rank, recommendation, automation_id, name, changes, records_touched, evidence "
        "FROM metrics.automation_estate ORDER BY rank"
    ).fetchall()
    lines = [f"Automation estate: {len(rows)} automations, best first."]
    for rank, verdict, automation_id, name, changes, records, evidence in rows:
        lines.append(
            f"{rank:>3}. {verdict.upper():<8} {automation_id}  {name}\n"
            f"     {changes} changes on {records} records; {evidence}"
        )
    return "\n".join(lines)


_COUNTS = ("automations", "keep", "migrate", "retire", "conflicting_pairs")


def _any_automation(conn: duckdb.DuckDBPyConnection) -> bool:
    return conn.execute("SELECT EXISTS (FROM estate.automations)").fetchone()[0]
