"""The weekly report a revenue leader reads: one self-contained HTML file (plots as inline SVG,
no script, nothing fetched from the network), and a PDF of it printed by Chromium.

Every figure is read from the views and tables analysts query (``metrics.*``,
docs/metrics.md and docs/report.md), never computed a second time here: this module only
selects, formats and draws. Each number in a table carries where it came from
(``data-view``, ``data-where``, ``data-column``, ``data-value``), so a reader, or a test, can
check it against the state store.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

# The funnel is metrics.funnel_conversion's: the same words wherever a funnel is shown.
FUNNEL_DEFINITION = (
    "One funnel definition: contacts as Revorch's stage machine places them "
    "(metrics.funnel_conversion, every lead source), the same funnel as `revorch report funnel` "
    "and the Dagster UI, not the CRM's lifecycle_stage labels."
)
MONTHS_SHOWN = 12  # cohorts in "Conversion over time"
# The order stages are listed in (docs/lifecycle.md); others follow by name.
LIFECYCLE = (
    "lead",
    "mql",
    "sql",
    "opportunity",
    "customer",
    "disqualified",
    "onboarding",
    "adoption",
    "renewal",
    "expansion",
    "churned",
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ReportError(RuntimeError):
    """The report cannot be made (no browser for the PDF, a failed print)."""


@dataclass
class Cell:
    """A number shown in a table, with the view, row and column it was read from."""

    text: str
    view: str | None = None
    where: dict[str, object] = field(default_factory=dict)
    column: str | None = None
    value: float | int | None = None

    @property
    def where_json(self) -> str:
        return json.dumps(self.where, default=str, sort_keys=True)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class Section:
    key: str
    title: str
    intro: str
    tables: list[Table] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # plot id -> inline SVG
    missing: str | None = None  # why the section has nothing to show
    notes: list[str] = field(default_factory=list)


# --- reading the views --------------------------------------------------------------------------


def _rows(conn: duckdb.DuckDBPyConnection, sql: str) -> list[dict] | None:
    """The rows of ``sql`` as dicts, or None when its view or table does not exist yet."""
    try:
        relation = conn.execute(sql)
    except duckdb.CatalogException:
        return None
    names = [d[0] for d in relation.description]
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def _number(value) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    number = float(value)
    return None if math.isnan(number) else number


def _fmt(value, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * float(value):.1f}%"
    if kind == "points":  # a difference of two rates
        return f"{100 * float(value):+.1f} pts"
    if kind == "usd":  # cents, or four decimals for what costs less than a dollar
        return f"${float(value):,.4f}" if 0 < abs(float(value)) < 1 else f"${float(value):,.2f}"
    if kind == "usd0":
        return f"${float(value):,.0f}"
    if kind == "days":
        return f"{float(value):.1f}"
    if kind == "hours":
        return f"{float(value):.1f}"
    if kind == "signed":
        return f"{float(value):+.3f}"
    return str(value)


def _cell(row: dict, view: str, where: dict, column: str, kind: str) -> Cell:
    value = row.get(column)
    return Cell(_fmt(value, kind), view, where, column, _number(value))


def _label(text: object) -> Cell:
    return Cell("" if text is None else str(text))


# --- plots --------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 3.0):
    from matplotlib.figure import Figure  # imported only when a report is made

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _svg(figure, name: str) -> str:
    """The figure as an inline <svg> element: text kept as text, ids unique per plot."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"revorch-{name}"}):
        # No RDF metadata block (creator, date): the same data draws the same plot.
        metadata = dict.fromkeys(("Creator", "Date", "Format", "Type"))
        figure.savefig(buffer, format="svg", metadata=metadata)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _bars(ax, labels: list[str], values: list[float], gid: str, **kwargs):
    bars = ax.bar(labels, values, **kwargs)
    for label, bar in zip(labels, bars, strict=True):
        bar.set_gid(f"{gid}-{label}")
    return bars


def _forest(rows: list[dict], label, low: str, high: str, mid: str, gid: str, xlabel: str):
    """Estimates with their intervals, one line each; NULL estimates are left out."""
    shown = [r for r in rows if r.get(mid) is not None and r.get(low) is not None]
    figure, ax = _figure(7.0, max(1.6, 0.45 * len(shown) + 1.0))
    for position, row in enumerate(reversed(shown)):
        centre, lo, hi = (100 * float(row[k]) for k in (mid, low, high))
        line = ax.errorbar(
            [centre],
            [position],
            xerr=[[centre - lo], [hi - centre]],
            fmt="o",
            capsize=3,
            color="#1f77b4" if row.get("status", "final") == "final" else "#999999",
        )
        line.lines[0].set_gid(f"{gid}-{position}")
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [label(r) for r in reversed(shown)])
    ax.set_xlabel(xlabel)
    return figure, len(shown)


# --- the sections -------------------------------------------------------------------------------


def _funnel(conn) -> Section:
    view = "metrics.funnel_conversion"
    section = Section("funnel", "Funnel", FUNNEL_DEFINITION)
    rows = _rows(
        conn,
        f"SELECT stage, reached, conversion_to_next FROM {view} "
        "WHERE lead_source = '(all)' ORDER BY stage_order",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    table = Table(["stage", "reached", "conversion to next stage"], [])
    for row in rows:
        where = {"lead_source": "(all)", "stage": row["stage"]}
        table.rows.append(
            [
                _label(row["stage"]),
                _cell(row, view, where, "reached", "count"),
                _cell(row, view, where, "conversion_to_next", "pct"),
            ]
        )
    section.tables.append(table)
    figure, ax = _figure()
    _bars(ax, [r["stage"] for r in rows], [r["reached"] for r in rows], "funnel", color="#1f77b4")
    ax.set_ylabel("contacts that reached the stage")
    section.plots["funnel"] = _svg(figure, "funnel")
    return section


def _conversion_over_time(conn) -> Section:
    view = "metrics.funnel_by_month"
    section = Section(
        "conversion",
        "Conversion over time",
        "The same funnel, by the month each contact first entered it (its cohort), for the "
        f"last {MONTHS_SHOWN} months. A recent cohort has had less time to move on, so its "
        "conversion is still rising.",
    )
    rows = _rows(
        conn,
        f"SELECT month, stage, reached, conversion_to_next FROM {view} "
        f"WHERE month IN (SELECT DISTINCT month FROM {view} ORDER BY month DESC "
        f"LIMIT {MONTHS_SHOWN}) ORDER BY month, stage_order",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    if not rows:
        section.missing = "No contact has entered the funnel yet."
        return section
    months = sorted({r["month"] for r in rows})
    by = {(r["month"], r["stage"]): r for r in rows}
    steps = [("lead", "lead → MQL"), ("mql", "MQL → SQL"), ("sql", "SQL → opportunity")]
    table = Table(["cohort month", "leads", *[name for _, name in steps]], [])
    for month in months:
        lead = by.get((month, "lead"), {})
        cells = [_label(f"{month:%Y-%m}")]
        cells.append(_cell(lead, view, {"month": month, "stage": "lead"}, "reached", "count"))
        for stage, _ in steps:
            row = by.get((month, stage), {})
            where = {"month": month, "stage": stage}
            cells.append(_cell(row, view, where, "conversion_to_next", "pct"))
        table.rows.append(cells)
    section.tables.append(table)
    figure, ax = _figure()
    for stage, name in steps:
        values = [by.get((m, stage), {}).get("conversion_to_next") for m in months]
        points = [(i, 100 * float(v)) for i, v in enumerate(values) if v is not None]
        if points:
            (line,) = ax.plot(*zip(*points, strict=True), marker="o", label=name)
            line.set_gid(f"conversion-{stage}")
    ax.set_xticks(range(len(months)), [f"{m:%Y-%m}" for m in months], rotation=45)
    ax.set_ylabel("% of the cohort")
    ax.legend(loc="upper left", fontsize="small")
    section.plots["conversion"] = _svg(figure, "conversion")
    return section


def _cycle_time(conn) -> Section:
    view = "metrics.stage_velocity"
    section = Section(
        "cycle_time",
        "Cycle time per stage",
        "Days contacts and accounts spend in each stage: median and 90th percentile of the "
        "stays that have ended; stays still open are counted apart.",
    )
    rows = _rows(
        conn,
        f"SELECT entity_type, stage, completed_stays, median_days, p90_days, open_stays "
        f"FROM {view} ORDER BY entity_type DESC, list_position({list(LIFECYCLE)}, stage) "
        "NULLS LAST, stage",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    table = Table(["entity", "stage", "ended stays", "median days", "p90 days", "open stays"], [])
    for row in rows:
        where = {"entity_type": row["entity_type"], "stage": row["stage"]}
        table.rows.append(
            [
                _label(row["entity_type"]),
                _label(row["stage"]),
                _cell(row, view, where, "completed_stays", "count"),
                _cell(row, view, where, "median_days", "days"),
                _cell(row, view, where, "p90_days", "days"),
                _cell(row, view, where, "open_stays", "count"),
            ]
        )
    section.tables.append(table)
    shown = [r for r in rows if r["median_days"] is not None]
    if shown:
        figure, ax = _figure(7.0, max(1.8, 0.32 * len(shown) + 0.8))
        labels = [f"{r['entity_type']}: {r['stage']}" for r in shown]
        bars = ax.barh(labels, [float(r["median_days"]) for r in shown], color="#1f77b4")
        for label, bar in zip(labels, bars, strict=True):
            bar.set_gid(f"cycle-{label}")
        ax.scatter(
            [float(r["p90_days"]) for r in shown],
            labels,
            marker="|",
            s=120,
            color="#d62728",
            label="p90",
            zorder=3,
        )
        ax.invert_yaxis()
        ax.set_xlabel("days in stage (bar: median, mark: p90)")
        section.plots["cycle_time"] = _svg(figure, "cycle_time")
    return section


def _retention(conn) -> Section:
    view = "metrics.revenue_retention"
    section = Section(
        "retention",
        "Net and gross revenue retention",
        "Over the 12 months that end at the clock, for the accounts that had an active "
        "subscription when the window started (docs/metrics.md gives the formulas).",
    )
    rows = _rows(
        conn,
        f"SELECT nrr, grr, starting_arr, churned_arr, contraction_arr, expansion_arr, accounts "
        f"FROM {view}",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    row = rows[0]
    columns = [
        ("nrr", "NRR", "pct"),
        ("grr", "GRR", "pct"),
        ("starting_arr", "starting ARR", "usd0"),
        ("churned_arr", "churned ARR", "usd0"),
        ("contraction_arr", "contraction ARR", "usd0"),
        ("expansion_arr", "expansion ARR", "usd0"),
        ("accounts", "accounts in the cohort", "count"),
    ]
    section.tables.append(
        Table(
            [name for _, name, _ in columns], [[_cell(row, view, {}, c, k) for c, _, k in columns]]
        )
    )
    figure, ax = _figure()
    parts = ["starting_arr", "churned_arr", "contraction_arr", "expansion_arr"]
    _bars(
        ax,
        [p.removesuffix("_arr") for p in parts],
        [float(row[p] or 0) for p in parts],
        "retention",
        color=["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"],
    )
    ax.set_ylabel("ARR")
    section.plots["retention"] = _svg(figure, "retention")
    return section


def _uplift(conn) -> Section:
    view = "metrics.playbook_uplift"
    section = Section(
        "uplift",
        "Uplift per playbook",
        "What each playbook changes, measured against its randomized holdout, with a 95% "
        "interval. Interim results (before the analysis date registered in "
        "config/policy.yaml) are grey: to watch, not to decide by. An interval across zero "
        "means the effect is not known, not that there is none.",
    )
    rows = _rows(
        conn,
        f"SELECT playbook, outcome, status, n_treatment, n_holdout, units_waiting, effect, "
        f"ci_low, ci_high, analysis_date FROM {view} ORDER BY playbook, outcome",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: the uplift read-out has not run."
        return section
    if not rows:
        section.missing = "No playbook has exposed an entity yet."
        return section
    table = Table(
        [
            "playbook",
            "outcome",
            "status",
            "treated",
            "held out",
            "waiting",
            "effect",
            "95% low",
            "95% high",
        ],
        [],
    )
    for row in rows:
        where = {"playbook": row["playbook"], "outcome": row["outcome"]}
        kind = "signed" if row["outcome"] in ("days_to_next_stage", "expansion_arr") else "points"
        table.rows.append(
            [
                _label(row["playbook"]),
                _label(row["outcome"]),
                _label(row["status"]),
                _cell(row, view, where, "n_treatment", "count"),
                _cell(row, view, where, "n_holdout", "count"),
                _cell(row, view, where, "units_waiting", "count"),
                _cell(row, view, where, "effect", kind),
                _cell(row, view, where, "ci_low", kind),
                _cell(row, view, where, "ci_high", kind),
            ]
        )
    section.tables.append(table)
    if any(r["status"] == "interim" for r in rows):
        section.notes.append(
            "Interim: the analysis date has not come; do not stop or "
            "scale a playbook on these intervals."
        )
    # Rates only (in points) share an axis; days and ARR stay in the table.
    rates = [r for r in rows if r["outcome"] in ("next_stage", "won", "renewed")]
    figure, shown = _forest(
        rates,
        lambda r: f"{r['playbook']} · {r['outcome']}",
        "ci_low",
        "ci_high",
        "effect",
        "uplift",
        "effect, percentage points (95%)",
    )
    if shown:
        section.plots["uplift"] = _svg(figure, "uplift")
    else:
        section.notes.append("No interval yet: too few entities have reached their horizon.")
    return section


def _cost(conn) -> Section:
    view = "metrics.agent_cost"
    section = Section(
        "cost",
        "Cost per agent and per outcome",
        "Model spend per agent (to date and in the last 7 days), per decision, and per "
        "action that was sent. Decisions taken offline cost nothing.",
    )
    rows = _rows(
        conn,
        f"SELECT agent, decisions, llm_decisions, cost_usd, cost_usd_7d, actions_sent, "
        f"cost_per_decision, cost_per_action_sent FROM {view}",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    if not [r for r in rows if r["agent"] != "(all)"]:
        section.missing = "No agent has decided anything yet."
        return section
    columns = [
        ("decisions", "decisions", "count"),
        ("llm_decisions", "by a model", "count"),
        ("cost_usd", "cost to date", "usd"),
        ("cost_usd_7d", "last 7 days", "usd"),
        ("actions_sent", "actions sent", "count"),
        ("cost_per_decision", "per decision", "usd"),
        ("cost_per_action_sent", "per action sent", "usd"),
    ]
    table = Table(["agent", *[name for _, name, _ in columns]], [])
    for row in rows:
        where = {"agent": row["agent"]}
        table.rows.append(
            [_label(row["agent"])] + [_cell(row, view, where, c, k) for c, _, k in columns]
        )
    section.tables.append(table)
    agents = [r for r in rows if r["agent"] != "(all)"]
    figure, ax = _figure()
    _bars(
        ax,
        [r["agent"] for r in agents],
        [float(r["cost_usd"]) for r in agents],
        "cost",
        color="#9467bd",
    )
    ax.set_ylabel("USD to date")
    ax.tick_params(axis="x", labelrotation=20)
    section.plots["cost"] = _svg(figure, "cost")
    return section


def _approvals(conn) -> Section:
    view = "metrics.approvals"
    section = Section(
        "approvals",
        "Approvals and their waiting time",
        "Actions the policy held for a person: how many were approved, rejected or expired, "
        "how many still wait, and the hours from proposal to decision.",
    )
    rows = _rows(
        conn,
        f"SELECT action_type, asked, approved, rejected, expired, waiting, "
        f"median_hours_to_decision, p90_hours_to_decision, oldest_waiting_hours FROM {view}",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    if not rows or rows[0]["asked"] == 0:
        section.missing = "No action has been held for approval."
        return section
    columns = [
        ("asked", "asked", "count"),
        ("approved", "approved", "count"),
        ("rejected", "rejected", "count"),
        ("expired", "expired", "count"),
        ("waiting", "waiting", "count"),
        ("median_hours_to_decision", "median hours", "hours"),
        ("p90_hours_to_decision", "p90 hours", "hours"),
        ("oldest_waiting_hours", "oldest waiting, hours", "hours"),
    ]
    table = Table(["action type", *[name for _, name, _ in columns]], [])
    for row in rows:
        where = {"action_type": row["action_type"]}
        table.rows.append(
            [_label(row["action_type"])] + [_cell(row, view, where, c, k) for c, _, k in columns]
        )
    section.tables.append(table)
    waits = _rows(conn, "SELECT waited_hours, waiting FROM metrics.approval_waits") or []
    figure, ax = _figure()
    groups = [
        ([float(w["waited_hours"]) for w in waits if w["waiting"] == waiting], label, color)
        for waiting, label, color in (
            (False, "decided", "#2ca02c"),
            (True, "still waiting", "#ff7f0e"),
        )
    ]
    groups = [g for g in groups if g[0]]
    ax.hist(
        [g[0] for g in groups],
        bins=20,
        stacked=True,
        label=[g[1] for g in groups],
        color=[g[2] for g in groups],
        gid="approvals-hist",
    )
    ax.set_xlabel("hours since proposal (to the decision, or to now)")
    ax.set_ylabel("actions")
    ax.legend(fontsize="small")
    section.plots["approvals"] = _svg(figure, "approvals")
    return section


def _estate(conn) -> Section:
    view = "metrics.automation_estate"
    section = Section(
        "estate",
        "Automation estate",
        "The automations already running (imported with `revorch estate import`), ranked: "
        "keep, migrate into Revorch, or retire. The outcome comparison is observational "
        "(records an automation touched against similar records it did not): a reason to "
        "look closer, not proof of an effect.",
    )
    rows = _rows(
        conn,
        f"SELECT rank, recommendation, automation_id, name, changes, records_touched, "
        f"matched_stays, lift, lift_low, lift_high, evidence FROM {view} ORDER BY rank",
    )
    if rows is None:
        section.missing = f"{view} does not exist yet: run `revorch ingest`."
        return section
    if not rows:
        section.missing = "No automation imported yet: `revorch estate import FILE --format ...`."
        return section
    table = Table(
        [
            "rank",
            "verdict",
            "automation",
            "changes",
            "records",
            "lift",
            "95% low",
            "95% high",
            "evidence",
        ],
        [],
    )
    for row in rows:
        where = {"automation_id": row["automation_id"]}
        table.rows.append(
            [
                _cell(row, view, where, "rank", "count"),
                _label(row["recommendation"]),
                _label(f"{row['name']} ({row['automation_id']})"),
                _cell(row, view, where, "changes", "count"),
                _cell(row, view, where, "records_touched", "count"),
                _cell(row, view, where, "lift", "points"),
                _cell(row, view, where, "lift_low", "points"),
                _cell(row, view, where, "lift_high", "points"),
                _label(row["evidence"]),
            ]
        )
    section.tables.append(table)
    figure, shown = _forest(
        rows,
        lambda r: f"{r['rank']}. {r['name']}",
        "lift_low",
        "lift_high",
        "lift",
        "estate",
        "lift in progress rate, percentage points (95%)",
    )
    if shown:
        section.plots["estate"] = _svg(figure, "estate")
    return section


SECTIONS = (
    _funnel,
    _conversion_over_time,
    _cycle_time,
    _retention,
    _uplift,
    _cost,
    _approvals,
    _estate,
)


# --- the report ---------------------------------------------------------------------------------


def weekly_report_html(conn: duckdb.DuckDBPyConnection, *, source: str = "") -> str:
    """The report on the state store ``conn`` reads (read-only is enough), as HTML."""
    (clock_now,) = conn.execute("SELECT clock_now()").fetchone()
    (data_until,) = conn.execute("SELECT max(occurred_at) FROM change_log").fetchone()
    environment = Environment(
        loader=PackageLoader("revorch.reports", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    environment.filters["code"] = _code
    template = environment.get_template("weekly.html")
    return template.render(
        sections=[make(conn) for make in SECTIONS],
        clock_now=_moment(clock_now),
        data_until=_moment(data_until),
        source=source,
    )


def _code(text: str) -> Markup:
    """Text with its `quoted commands` shown as code (escaped first)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _moment(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if isinstance(value, datetime) else "n/a"


def find_browser() -> str | None:
    """A Chromium or Chrome on the PATH, for the PDF."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def print_pdf(html_path: Path, pdf_path: Path, browser: str | None = None) -> Path:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium (no network is needed: the
    HTML holds everything). Raises :class:`ReportError` when no browser is found or it fails."""
    browser = browser or find_browser()
    if browser is None:
        raise ReportError("no Chromium found for the PDF (install chromium, or leave out --pdf)")
    with tempfile.TemporaryDirectory(prefix="revorch-pdf-") as profile:
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                f"--print-to-pdf={pdf_path}",
                html_path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if done.returncode != 0 or not pdf_path.is_file():
        raise ReportError(f"Chromium could not print the PDF: {done.stderr.strip()[-300:]}")
    return pdf_path
