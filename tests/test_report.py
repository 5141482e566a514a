"""The weekly report (docs/report.md) made by its asset on a copy of the shared simulated CRM,
opened in Debian's Chromium (driven by Playwright, which downloads no browser) with every
network request refused: its plots are there, and every number it shows is the one its
``metrics`` view holds."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from revorch import clock
from revorch.governance.approvals import Review, review

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOTS = {"funnel", "conversion", "cycle_time", "retention", "uplift", "cost", "approvals", "estate"}
REPORT_STEPS = dg.AssetSelection.assets(
    ["metrics", "playbook_uplift"],
    ["metrics", "automation_estate"],
    ["metrics", "funnel_by_month"],
    ["metrics", "agent_cost"],
    ["metrics", "approvals"],
    ["reports", "weekly_report"],
    ["analytics", "published_state"],  # `revorch report weekly` reads the analysts' copy
)
# An estate with evidence to rank: a zap that made every change to a third of the contacts
# (the change log says so below), and one that never fired.
INVENTORY = (
    "id,name,platform,trigger,object_type,fields_written,enabled,source_key\n"
    "z1,Third of the contacts,zapier,new contact,contact,lead_status,true,zap-third\n"
    "z2,Never fires,zapier,new deal,deal,stage,true,zap-never\n"
)


@pytest.fixture(scope="module")
def made(simulated_crm, tmp_path_factory):
    """The governed CRM with a week's worth of what the report shows: a model bill, two
    reviews, holdouts whose horizon has passed, an imported estate; then the report's assets."""
    from resources import default_resources
    from revorch.definitions import materialize
    from revorch.estate.inventory import import_inventory

    home = simulated_crm.copy("governed", tmp_path_factory.mktemp("report") / "crm")
    # A fixed clock, after the CRM was built, for the run and for the comparison: "now"
    # cannot move between the two.
    fixed = datetime.now(UTC).replace(microsecond=0).isoformat()
    with home.connect() as conn:
        pending = [
            r[0]
            for r in conn.execute(
                "SELECT action_id FROM governance.approval_queue ORDER BY action_id LIMIT 3"
            ).fetchall()
        ]
        assert len(pending) == 3, "the shared CRM holds actions for approval"
        review(conn, Review(pending[:1], "approve", "alice"), run_id=None, anchor_path=home.anchor)
        review(
            conn,
            Review(pending[1:2], "reject", "bob", "not now"),
            run_id=None,
            anchor_path=home.anchor,
        )
        conn.execute(
            "INSERT INTO agents.cost_ledger VALUES (NULL, 'lead_qualification', 'gpt-test', "
            "current_date, 40, 1, 12000, 0, 3000, 1.25, now())"
        )
        # As if Revorch had exposed them 60 days ago, so their outcomes are in (test_holdouts).
        conn.execute(
            "UPDATE governance.holdout_assignments SET exposed_at = exposed_at - INTERVAL 60 DAY"
        )
        conn.execute(
            "UPDATE change_log SET source = 'zap-third' "
            "WHERE object_type = 'contact' AND hash(object_id) % 3 = 0"
        )
        inventory = home.root / "inventory.csv"
        inventory.write_text(INVENTORY)
        import_inventory(conn, inventory, "csv")
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("REVORCH_")]:
            env.delenv(name)
        env.setenv("REVORCH_HOME", str(home.root))  # the report and the copy go there
        env.setenv("REVORCH_CLOCK", fixed)
        result = materialize(REPORT_STEPS, resources=default_resources())
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["reports", "weekly_report"])
    ]
    path = Path(event.materialization.metadata["path"].value)
    return home, path, fixed


def _read_page(path: Path) -> tuple[dict, list[dict], list[str]]:
    """What Chromium shows: each section's plots and text, every sourced number, and the
    requests it tried to make beyond the file itself."""
    sync_api = pytest.importorskip("playwright.sync_api")
    refused: list[str] = []

    def route(request_route):
        if request_route.request.url == path.as_uri():
            return request_route.continue_()
        refused.append(request_route.request.url)
        return request_route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", route)
            page.goto(path.as_uri())
            sections = page.eval_on_selector_all(
                "section[data-section]",
                """els => Object.fromEntries(els.map(s => [s.dataset.section, {
                    text: s.innerText,
                    missing: s.querySelector('[data-missing]') !== null,
                    plots: Array.from(s.querySelectorAll('figure[data-plot]')).map(f => ({
                        id: f.dataset.plot,
                        paths: f.querySelectorAll('svg path').length,
                        width: f.querySelector('svg').getBoundingClientRect().width,
                        marks: Array.from(f.querySelectorAll('svg g[id]')).map(g => g.id),
                    })),
                }]))""",
            )
            cells = page.eval_on_selector_all(
                "td[data-view]",
                """els => els.map(td => ({view: td.dataset.view, where: td.dataset.where,
                    column: td.dataset.column, value: td.dataset.value,
                    text: td.innerText}))""",
            )
        finally:
            browser.close()
    return sections, cells, refused


def _shown_number(text: str) -> float | None:
    """The number a reader sees: '1,234' 1234; '38.2%' 0.382; '+2.0 pts' 0.02; '$1.25' 1.25."""
    if text == "n/a":
        return None
    number = float(re.sub(r"[^0-9.+-]", "", text))
    return number / 100 if text.endswith(("%", "pts")) else number


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_report_in_chromium_shows_its_plots_and_the_metrics_views_numbers(made):
    home, path, fixed = made
    sections, cells, refused = _read_page(path)

    assert refused == []  # one self-contained file: nothing fetched
    plots = {p["id"]: p for s in sections.values() for p in s["plots"]}
    assert set(plots) == PLOTS
    assert all(p["paths"] > 3 and p["width"] > 200 for p in plots.values()), plots
    funnel_bars = [m for m in plots["funnel"]["marks"] if m.startswith("funnel-")]
    assert len(funnel_bars) == 5  # lead, mql, sql, opportunity, customer
    assert "One funnel definition" in sections["funnel"]["text"]
    assert "metrics.funnel_conversion" in sections["funnel"]["text"]
    assert not any(s["missing"] for s in sections.values())
    assert "interim" in sections["uplift"]["text"].lower()

    checked = {cell["view"] for cell in cells}
    assert checked >= {
        "metrics.funnel_conversion",
        "metrics.funnel_by_month",
        "metrics.stage_velocity",
        "metrics.revenue_retention",
        "metrics.playbook_uplift",
        "metrics.agent_cost",
        "metrics.approvals",
        "metrics.automation_estate",
    }
    with duckdb.connect(str(home.database), read_only=True) as conn:
        clock.bind(conn, fixed)
        for cell in cells:
            where = json.loads(cell["where"])
            clause = " AND ".join(f"{k} = ?" for k in where) or "true"
            rows = conn.execute(
                f"SELECT {cell['column']} FROM {cell['view']} WHERE {clause}", list(where.values())
            ).fetchall()
            assert len(rows) == 1, cell
            expected = rows[0][0]
            shown = _shown_number(cell["text"])
            if expected is None:
                assert shown is None and cell["value"] == "", cell
                continue
            assert float(cell["value"]) == pytest.approx(float(expected), rel=1e-9), cell
            # What the reader sees, rounded as shown: within half its last digit.
            digits = cell["text"].rstrip("%ptsa ").split(".")
            scale = 100 if cell["text"].endswith(("%", "pts")) else 1
            places = len(digits[1]) if len(digits) > 1 else 0
            assert shown == pytest.approx(float(expected), abs=0.51 / scale / 10**places), cell

        # The funnel over time is the same funnel: its cohorts add up to the funnel's counts.
        by_month = dict(
            conn.execute(
                "SELECT stage, sum(reached) FROM metrics.funnel_by_month GROUP BY stage"
            ).fetchall()
        )
        funnel = dict(
            conn.execute(
                "SELECT stage, reached FROM metrics.funnel_conversion WHERE lead_source = '(all)'"
            ).fetchall()
        )
        assert by_month == funnel
        approvals = conn.execute(
            "SELECT approved, rejected FROM metrics.approvals WHERE action_type = '(all)'"
        ).fetchone()
        assert approvals == (1, 1)
        (shortest,) = conn.execute(
            "SELECT min(waited_hours) FROM metrics.approval_waits"
        ).fetchone()
        assert shortest >= 0


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_revorch_report_weekly_writes_the_html_and_a_pdf(made, tmp_path):
    home, _, fixed = made
    out = tmp_path / "week.html"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("revorch")),
            "report",
            "weekly",
            "--out",
            str(out),
            "--pdf",
        ],
        env={"PATH": str(Path(CHROMIUM).parent), **home.env(), "REVORCH_CLOCK": fixed},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert html.count("<svg") == len(PLOTS) and "<script" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:|url\(\s*["']?https?:""", html)
    pdf = out.with_suffix(".pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000


def test_an_empty_state_store_gives_a_report_that_says_what_is_missing(conn):
    from revorch.reports.weekly import weekly_report_html

    html = weekly_report_html(conn)
    # Nothing has run: no view exists, and each section says why it is empty.
    assert html.count("data-missing=") == len(PLOTS)
    assert "<svg" not in html and "run <code>revorch ingest</code>" in html
