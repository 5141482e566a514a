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
from collections.abc import Callable
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


# --- the plots of the sections ------------------------------------------------------------------
# Each takes the section's rows (and the connection, for what the table does not show) and
# returns a figure, or None when there is nothing to draw.


def _bar_plot(label: str, value: str, gid: str, ylabel: str, color: str, rotation: int = 0):
    def plot(rows: list[dict], conn) -> object:
        shown = [r for r in rows if r[label] != "(all)"]
        figure, ax = _figure()
        _bars(ax, [r[label] for r in shown], [float(r[value]) for r in shown], gid, color=color)
        ax.set_ylabel(ylabel)
        if rotation:
            ax.tick_params(axis="x", labelrotation=rotation)
        return figure

    return plot


def _forest_plot(label, low: str, high: str, mid: str, gid: str, xlabel: str, keep=None):
    def plot(rows: list[dict], conn) -> object:
        shown = [r for r in rows if keep is None or keep(r)]
        figure, drawn = _forest(shown, label, low, high, mid, gid, xlabel)
        return figure if drawn else None

    return plot


def _conversion_plot(rows: list[dict], conn) -> object:
    months = sorted({r["month"] for r in rows})
    by = {(r["month"], r["stage"]): r for r in rows}
    figure, ax = _figure()
    for stage, name in CONVERSION_STEPS:
        values = [by.get((m, stage), {}).get("conversion_to_next") for m in months]
        points = [(i, 100 * float(v)) for i, v in enumerate(values) if v is not None]
        if points:
            (line,) = ax.plot(*zip(*points, strict=True), marker="o", label=name)
            line.set_gid(f"conversion-{stage}")
    ax.set_xticks(range(len(months)), [f"{m:%Y-%m}" for m in months], rotation=45)
    ax.set_ylabel("% of the cohort")
    ax.legend(loc="upper left", fontsize="small")
    return figure


def _cycle_time_plot(rows: list[dict], conn) -> object:
    shown = [r for r in rows if r["median_days"] is not None]
    if not shown:
        return None
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
    return figure


def _retention_plot(rows: list[dict], conn) -> object:
    figure, ax = _figure()
    parts = ["starting_arr", "churned_arr", "contraction_arr", "expansion_arr"]
    _bars(
        ax,
        [p.removesuffix("_arr") for p in parts],
        [float(rows[0][p] or 0) for p in parts],
        "retention",
        color=["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c"],
    )
    ax.set_ylabel("ARR")
    return figure


def _approvals_plot(rows: list[dict], conn) -> object:
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
    return figure


# --- the sections -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of a section's table: the view's column ``name`` under ``heading``, as text
    (``kind`` "label") or as a number that names its source, formatted by ``kind`` (a
    :func:`_fmt` kind, or a function of the row that picks one). ``at`` reads another row of
    the same line: the conversion table shows several stages of a month side by side."""

    name: str
    heading: str
    kind: str | Callable[[dict], str] = "label"
    at: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class SectionSpec:
    """What a section reads and shows: ``sql`` (``{view}`` stands for ``view``) gives the
    rows; ``keys`` name one row of the view, the ``line`` keys one line of the table (default:
    all of them), and ``where`` is the rest of each number's ``data-where``."""

    key: str
    title: str
    intro: str
    view: str
    sql: str
    columns: tuple[Column, ...]
    keys: tuple[str, ...] = ()
    line: tuple[str, ...] | None = None
    where: tuple[tuple[str, object], ...] = ()
    not_yet: str = "run `revorch ingest`."  # what makes the view exist
    empty: str | None = None  # said when ``is_empty``
    is_empty: Callable[[list[dict]], bool] = lambda rows: not rows
    plot: Callable[[list[dict], duckdb.DuckDBPyConnection], object] | None = None
    notes: Callable[[list[dict], bool], list[str]] = lambda rows, plotted: []


def _section(spec: SectionSpec, conn: duckdb.DuckDBPyConnection) -> Section:
    """The section ``spec`` declares, read from ``conn``: its table, plot and notes, or why
    it has nothing to show."""
    section = Section(spec.key, spec.title, spec.intro)
    rows = _rows(conn, spec.sql.format(view=spec.view))
    if rows is None:
        section.missing = f"{spec.view} does not exist yet: {spec.not_yet}"
        return section
    if spec.empty and spec.is_empty(rows):
        section.missing = spec.empty
        return section
    line_keys = spec.keys if spec.line is None else spec.line
    by_key = {tuple(r[k] for k in spec.keys): r for r in rows}
    lines: dict[tuple, dict] = {}
    for row in rows:
        lines.setdefault(tuple(row[k] for k in line_keys), row)
    table = Table([c.heading for c in spec.columns], [])
    for first in lines.values():
        cells = []
        for column in spec.columns:
            where = {**dict(spec.where), **{k: first[k] for k in line_keys}, **dict(column.at)}
            row = by_key.get(tuple(where[k] for k in spec.keys), {}) if column.at else first
            value = row.get(column.name)
            if column.kind == "label":
                cells.append(Cell("" if value is None else str(value)))
                continue
            kind = column.kind(row) if callable(column.kind) else column.kind
            cells.append(Cell(_fmt(value, kind), spec.view, where, column.name, _number(value)))
        table.rows.append(cells)
    section.tables.append(table)
    figure = spec.plot(rows, conn) if spec.plot else None
    if figure is not None:
        section.plots[spec.key] = _svg(figure, spec.key)
    section.notes += spec.notes(rows, figure is not None)
    return section


CONVERSION_STEPS = (("lead", "lead → MQL"), ("mql", "MQL → SQL"), ("sql", "SQL → opportunity"))
RATE_OUTCOMES = ("next_stage", "won", "renewed")  # in points, on one axis


def _uplift_unit(row: dict) -> str:
    """Days and ARR are differences of amounts; the other outcomes, of rates."""
    return "signed" if row["outcome"] in ("days_to_next_stage", "expansion_arr") else "points"


def _uplift_notes(rows: list[dict], plotted: bool) -> list[str]:
    notes = []
    if any(r["status"] == "interim" for r in rows):
        notes.append(
            "Interim: the analysis date has not come; do not stop or "
            "scale a playbook on these intervals."
        )
    if not plotted:
        notes.append("No interval yet: too few entities have reached their horizon.")
    return notes


SECTIONS = (
    SectionSpec(
        "funnel",
        "Funnel",
        FUNNEL_DEFINITION,
        "metrics.funnel_conversion",
        "SELECT stage, reached, conversion_to_next FROM {view} "
        "WHERE lead_source = '(all)' ORDER BY stage_order",
        (
            Column("stage", "stage"),
            Column("reached", "reached", "count"),
            Column("conversion_to_next", "conversion to next stage", "pct"),
        ),
        keys=("stage",),
        where=(("lead_source", "(all)"),),
        plot=_bar_plot("stage", "reached", "funnel", "contacts that reached the stage", "#1f77b4"),
    ),
    SectionSpec(
        "conversion",
        "Conversion over time",
        "The same funnel, by the month each contact first entered it (its cohort), for the "
        f"last {MONTHS_SHOWN} months. A recent cohort has had less time to move on, so its "
        "conversion is still rising.",
        "metrics.funnel_by_month",
        "SELECT month, strftime(month, '%Y-%m') AS cohort, stage, reached, conversion_to_next "
        "FROM {view} WHERE month IN (SELECT DISTINCT month FROM {view} ORDER BY month DESC "
        f"LIMIT {MONTHS_SHOWN}) ORDER BY month, stage_order",
        (
            Column("cohort", "cohort month"),
            Column("reached", "leads", "count", at=(("stage", "lead"),)),
            *(
                Column("conversion_to_next", name, "pct", at=(("stage", stage),))
                for stage, name in CONVERSION_STEPS
            ),
        ),
        keys=("month", "stage"),
        line=("month",),
        empty="No contact has entered the funnel yet.",
        plot=_conversion_plot,
    ),
    SectionSpec(
        "cycle_time",
        "Cycle time per stage",
        "Days contacts and accounts spend in each stage: median and 90th percentile of the "
        "stays that have ended; stays still open are counted apart.",
        "metrics.stage_velocity",
        "SELECT entity_type, stage, completed_stays, median_days, p90_days, open_stays "
        f"FROM {{view}} ORDER BY entity_type DESC, list_position({list(LIFECYCLE)}, stage) "
        "NULLS LAST, stage",
        (
            Column("entity_type", "entity"),
            Column("stage", "stage"),
            Column("completed_stays", "ended stays", "count"),
            Column("median_days", "median days", "days"),
            Column("p90_days", "p90 days", "days"),
            Column("open_stays", "open stays", "count"),
        ),
        keys=("entity_type", "stage"),
        plot=_cycle_time_plot,
    ),
    SectionSpec(
        "retention",
        "Net and gross revenue retention",
        "Over the 12 months that end at the clock, for the accounts that had an active "
        "subscription when the window started (docs/metrics.md gives the formulas).",
        "metrics.revenue_retention",
        "SELECT nrr, grr, starting_arr, churned_arr, contraction_arr, expansion_arr, accounts "
        "FROM {view}",
        (
            Column("nrr", "NRR", "pct"),
            Column("grr", "GRR", "pct"),
            Column("starting_arr", "starting ARR", "usd0"),
            Column("churned_arr", "churned ARR", "usd0"),
            Column("contraction_arr", "contraction ARR", "usd0"),
            Column("expansion_arr", "expansion ARR", "usd0"),
            Column("accounts", "accounts in the cohort", "count"),
        ),
        plot=_retention_plot,
    ),
    SectionSpec(
        "uplift",
        "Uplift per playbook",
        "What each playbook changes, measured against its randomized holdout, with a 95% "
        "interval. Interim results (before the analysis date registered in "
        "config/policy.yaml) are grey: to watch, not to decide by. An interval across zero "
        "means the effect is not known, not that there is none.",
        "metrics.playbook_uplift",
        "SELECT playbook, outcome, status, n_treatment, n_holdout, units_waiting, effect, "
        "ci_low, ci_high, analysis_date FROM {view} ORDER BY playbook, outcome",
        (
            Column("playbook", "playbook"),
            Column("outcome", "outcome"),
            Column("status", "status"),
            Column("n_treatment", "treated", "count"),
            Column("n_holdout", "held out", "count"),
            Column("units_waiting", "waiting", "count"),
            Column("effect", "effect", _uplift_unit),
            Column("ci_low", "95% low", _uplift_unit),
            Column("ci_high", "95% high", _uplift_unit),
        ),
        keys=("playbook", "outcome"),
        not_yet="the uplift read-out has not run.",
        empty="No playbook has exposed an entity yet.",
        plot=_forest_plot(
            lambda r: f"{r['playbook']} · {r['outcome']}",
            "ci_low",
            "ci_high",
            "effect",
            "uplift",
            "effect, percentage points (95%)",
            keep=lambda r: r["outcome"] in RATE_OUTCOMES,  # rates share an axis
        ),
        notes=_uplift_notes,
    ),
    SectionSpec(
        "cost",
        "Cost per agent and per outcome",
        "Model spend per agent (to date and in the last 7 days), per decision, and per "
        "action that was sent. Decisions taken offline cost nothing.",
        "metrics.agent_cost",
        "SELECT agent, decisions, llm_decisions, cost_usd, cost_usd_7d, actions_sent, "
        "cost_per_decision, cost_per_action_sent FROM {view}",
        (
            Column("agent", "agent"),
            Column("decisions", "decisions", "count"),
            Column("llm_decisions", "by a model", "count"),
            Column("cost_usd", "cost to date", "usd"),
            Column("cost_usd_7d", "last 7 days", "usd"),
            Column("actions_sent", "actions sent", "count"),
            Column("cost_per_decision", "per decision", "usd"),
            Column("cost_per_action_sent", "per action sent", "usd"),
        ),
        keys=("agent",),
        empty="No agent has decided anything yet.",
        is_empty=lambda rows: all(r["agent"] == "(all)" for r in rows),
        plot=_bar_plot("agent", "cost_usd", "cost", "USD to date", "#9467bd", rotation=20),
    ),
    SectionSpec(
        "approvals",
        "Approvals and their waiting time",
        "Actions the policy held for a person: how many were approved, rejected or expired, "
        "how many still wait, and the hours from proposal to decision.",
        "metrics.approvals",
        "SELECT action_type, asked, approved, rejected, expired, waiting, "
        "median_hours_to_decision, p90_hours_to_decision, oldest_waiting_hours FROM {view}",
        (
            Column("action_type", "action type"),
            Column("asked", "asked", "count"),
            Column("approved", "approved", "count"),
            Column("rejected", "rejected", "count"),
            Column("expired", "expired", "count"),
            Column("waiting", "waiting", "count"),
            Column("median_hours_to_decision", "median hours", "hours"),
            Column("p90_hours_to_decision", "p90 hours", "hours"),
            Column("oldest_waiting_hours", "oldest waiting, hours", "hours"),
        ),
        keys=("action_type",),
        empty="No action has been held for approval.",
        is_empty=lambda rows: not rows or rows[0]["asked"] == 0,
        plot=_approvals_plot,
    ),
    SectionSpec(
        "estate",
        "Automation estate",
        "The automations already running (imported with `revorch estate import`), ranked: "
        "keep, migrate into Revorch, or retire. The outcome comparison is observational "
        "(records an automation touched against similar records it did not): a reason to "
        "look closer, not proof of an effect.",
        "metrics.automation_estate",
        "SELECT rank, recommendation, automation_id, name || ' (' || automation_id || ')' "
        "AS automation, name, changes, records_touched, matched_stays, lift, lift_low, "
        "lift_high, evidence FROM {view} ORDER BY rank",
        (
            Column("rank", "rank", "count"),
            Column("recommendation", "verdict"),
            Column("automation", "automation"),
            Column("changes", "changes", "count"),
            Column("records_touched", "records", "count"),
            Column("lift", "lift", "points"),
            Column("lift_low", "95% low", "points"),
            Column("lift_high", "95% high", "points"),
            Column("evidence", "evidence"),
        ),
        keys=("automation_id",),
        empty="No automation imported yet: `revorch estate import FILE --format ...`.",
        plot=_forest_plot(
            lambda r: f"{r['rank']}. {r['name']}",
            "lift_low",
            "lift_high",
            "lift",
            "estate",
            "lift in progress rate, percentage points (95%)",
        ),
    ),
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
        sections=[_section(spec, conn) for spec in SECTIONS],
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
