"""The business metrics views, on small hand-made data whose answers were worked out by hand,
and the metric assets materialized for real by Dagster."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from orch_assets.metrics.assets import (
    FUNNEL_PROGRESS,
    SLA_FIRST_TOUCHES,
    STAGE_STAYS,
    create_views,
    metric_assets,
    refresh_subscription_arr,
    refresh_table,
    sla_parameters,
)
from resources import LifecycleConfigResource, StateStore
from revorch.lifecycle.config import DEFAULT_PATH, load_lifecycle_config

# The data clock of every test: the newest change in change_log.
AS_OF = datetime(2026, 7, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

_event_ids = iter(range(1_000_000))


def change(conn, object_type: str, object_id: str, at: datetime, **properties) -> None:
    conn.execute(
        "INSERT INTO change_log VALUES (?, 1, 'b-1', 'test', ?, ?, 'upsert', ?, ?, ?)",
        [f"e-{next(_event_ids)}", object_type, object_id, at, at, json.dumps(properties)],
    )


def set_clock(conn) -> None:
    change(conn, "owner", "o-clock", AS_OF, role="sdr")


def moves(conn, entity_id: str, *path: tuple[str, datetime], entity_type: str = "contact"):
    """Stage transitions of one entity: path is (to_stage, at), ..., starting from 'new'."""
    previous = "new"
    for seq, (stage, at) in enumerate(path, start=1):
        conn.execute(
            "INSERT INTO stages.stage_transitions VALUES (?, ?, ?, ?, ?, ?, 'rule', 'test', NULL, NULL)",
            [entity_type, entity_id, seq, previous, stage, at],
        )
        previous = stage


def contact(conn, contact_id: str, lead_source: str | None, deleted: bool = False) -> None:
    conn.execute(
        "INSERT INTO contacts (id, lead_source, _deleted) VALUES (?, ?, ?)",
        [contact_id, lead_source, deleted],
    )


def deal(conn, deal_id, deal_type, stage, amount, closed_at=None, close_date=None, **extra):
    conn.execute(
        "INSERT INTO deals (id, deal_type, stage, amount, closed_at, close_date, company_id, "
        "_deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            deal_id,
            deal_type,
            stage,
            amount,
            closed_at,
            close_date,
            extra.get("company_id"),
            extra.get("deleted", False),
        ],
    )


def activity(conn, activity_id, contact_id, activity_type, at, deleted=False) -> None:
    conn.execute(
        "INSERT INTO activities (id, activity_type, contact_id, activity_at, _deleted) "
        "VALUES (?, ?, ?, ?, ?)",
        [activity_id, activity_type, contact_id, at, deleted],
    )


def subscription(conn, sub_id, company_id, start, end, arr, status, renewal_of=None, **extra):
    conn.execute(
        "INSERT INTO subscriptions (id, company_id, start_date, end_date, arr, status, "
        "renewal_of, _deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [sub_id, company_id, start, end, arr, status, renewal_of, extra.get("deleted", False)],
    )


def sla_views(conn, config) -> None:
    refresh_table(conn, SLA_FIRST_TOUCHES, sla_parameters(config), full_rebuild=True)
    create_views(conn, "sla_entries", "sla_compliance")


def views(conn):
    """The views and the tables they read, recomputed from everything (a full rebuild)."""
    refresh_table(conn, FUNNEL_PROGRESS, full_rebuild=True)
    refresh_table(conn, STAGE_STAYS, full_rebuild=True)
    refresh_subscription_arr(conn, full_rebuild=True)
    create_views(conn, "funnel_conversion", "stage_velocity", "win_rate", "pipeline")
    sla_views(conn, load_lifecycle_config())
    create_views(conn, "revenue_retention_accounts", "revenue_retention")


def rows(conn, sql: str) -> list[dict]:
    cursor = conn.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- hand-made data sets, one per metric --------------------------------------------------


def funnel_data(conn) -> None:
    t = AS_OF - 60 * DAY
    contact(conn, "c1", "webinar")
    moves(conn, "c1", ("lead", t), ("mql", t + DAY), ("sql", t + 2 * DAY),
          ("opportunity", t + 3 * DAY), ("customer", t + 4 * DAY))  # fmt: skip
    contact(conn, "c2", "webinar")  # skips mql: reaches it all the same
    moves(conn, "c2", ("lead", t), ("sql", t + DAY), ("disqualified", t + 2 * DAY))
    contact(conn, "c3", "paid_ads")
    moves(conn, "c3", ("lead", t), ("mql", t + DAY))
    contact(conn, "c4", "paid_ads")
    moves(conn, "c4", ("lead", t))
    contact(conn, "c5", "paid_ads")  # starts as mql, recycled to lead after a lost deal
    moves(conn, "c5", ("mql", t), ("sql", t + DAY), ("opportunity", t + 2 * DAY),
          ("lead", t + 3 * DAY))  # fmt: skip
    contact(conn, "c6", "referral", deleted=True)
    moves(conn, "c6", ("lead", t), ("mql", t + DAY))


def velocity_data(conn) -> None:
    t = AS_OF - 40 * DAY
    for i, days in enumerate([1, 2, 4, 10]):
        moves(conn, f"v{i}", ("mql", t), ("sql", t + days * DAY))
    moves(conn, "v-open", ("mql", AS_OF - 20 * DAY))
    moves(conn, "co-v", ("onboarding", t), ("adoption", t + 45 * DAY), entity_type="company")


def win_rate_data(conn) -> None:
    q1 = datetime(2026, 2, 10, tzinfo=UTC)
    q2 = datetime(2026, 5, 10, tzinfo=UTC)
    deal(conn, "w1", "new_business", "closedwon", 100.0, closed_at=q1)
    # The last half hour of Q1 in UTC, already Q2 in Tokyo: quarters are taken in UTC.
    deal(conn, "w2", "new_business", "closedwon", 200.0, closed_at=datetime(2026, 3, 31, 23, 30, tzinfo=UTC))  # fmt: skip
    deal(conn, "w3", "new_business", "closedlost", 50.0, closed_at=q1)
    deal(conn, "w4", "new_business", "closedwon", 400.0, closed_at=q2)
    deal(conn, "w5", "new_business", "closedlost", None, closed_at=q2)
    deal(conn, "w6", "new_business", "closedlost", None, closed_at=q2)
    deal(conn, "w7", "new_business", "closedlost", None, close_date=date(2026, 6, 30))
    deal(conn, "w8", "expansion", "closedwon", 900.0, closed_at=q2)  # not new business
    deal(conn, "w9", "new_business", "closedwon", 900.0, closed_at=q2, deleted=True)


def pipeline_data(conn) -> None:
    deal(conn, "p1", "new_business", "appointmentscheduled", 100.0)
    deal(conn, "p2", "new_business", "appointmentscheduled", 200.0)
    deal(conn, "p3", "new_business", "qualifiedtobuy", 300.0)
    deal(conn, "p4", "expansion", "qualifiedtobuy", 50.0)
    deal(conn, "p5", "renewal", "contractsent", None)
    deal(conn, "p6", "new_business", "qualifiedtobuy", 999.0, deleted=True)


def sla_data(conn) -> None:
    t0 = AS_OF - 100 * HOUR  # mql: 48 h, sql: 24 h (config/lifecycle.yaml)
    moves(conn, "s1", ("lead", t0 - 10 * HOUR), ("mql", t0))
    activity(conn, "a1", "s1", "email_sent", t0 + 10 * HOUR)  # met
    moves(conn, "s2", ("mql", t0))
    activity(conn, "a2", "s2", "call", t0 + 50 * HOUR)  # late: missed
    moves(conn, "s3", ("mql", t0))  # never touched, window over: missed
    moves(conn, "s4", ("mql", t0 + 80 * HOUR))  # due t0 + 128 h, after the clock: pending
    moves(conn, "s5", ("sql", t0 + 90 * HOUR))  # due t0 + 114 h: pending
    activity(conn, "a5", "s5", "web_visit", t0 + 91 * HOUR)  # not a sales touch
    moves(conn, "s6", ("sql", t0))
    activity(conn, "a6a", "s6", "email_opened", t0 + HOUR)  # not a sales touch
    activity(conn, "a6b", "s6", "meeting", t0 + 20 * HOUR)  # met
    moves(conn, "s7", ("sql", t0))
    activity(conn, "a7", "s7", "email_sent", t0 - HOUR)  # before the entry: missed
    moves(conn, "s8", ("mql", t0))
    activity(conn, "a8", "s8", "meeting", t0 + HOUR, deleted=True)  # deleted: missed


def retention_data(conn) -> None:
    """Window: 2025-07-01 .. 2026-07-01. Starting ARR 1000 + 2000 + 3000 + 5000 = 11000."""
    sub_history = {
        "A1": (datetime(2025, 1, 1, tzinfo=UTC), 1000.0),
        "B1": (datetime(2025, 3, 1, tzinfo=UTC), 2000.0),
        "C1": (datetime(2025, 6, 1, tzinfo=UTC), 3000.0),
    }
    for sub_id, (at, arr) in sub_history.items():
        change(conn, "subscription", sub_id, at, arr=arr)
    # A churns: churned 1000.
    subscription(conn, "A1", "A", date(2025, 1, 1), date(2026, 1, 1), 1000.0, "churned")
    # B renews lower: contraction 2000 - 1500 = 500.
    subscription(conn, "B1", "B", date(2025, 3, 1), date(2026, 3, 1), 2000.0, "renewed")
    subscription(conn, "B2", "B", date(2026, 3, 1), date(2027, 3, 1), 1500.0, "active", "B1")
    # C expands mid-term by a 600 deal (arr 3000 -> 3600), then renews at 4000: expansion
    # 600 + 400 (+ 200 below). Its starting ARR is the 3000 it had at the window start, not today's 3600.
    change(conn, "subscription", "C1", datetime(2025, 10, 1, tzinfo=UTC), arr=3600.0)
    subscription(conn, "C1", "C", date(2025, 6, 1), date(2026, 6, 1), 3600.0, "renewed")
    deal(conn, "x1", "expansion", "closedwon", 600.0, closed_at=datetime(2025, 9, 30, tzinfo=UTC), company_id="C")  # fmt: skip
    # C2 then expands by a 200 deal (arr 4000 -> 4200): expansion 200, not renewal uplift.
    subscription(conn, "C2", "C", date(2026, 6, 1), date(2027, 6, 1), 4200.0, "active", "C1")
    change(conn, "subscription", "C2", datetime(2026, 6, 1, tzinfo=UTC), arr=4000.0)
    change(conn, "subscription", "C2", datetime(2026, 6, 21, tzinfo=UTC), arr=4200.0)
    deal(conn, "x5", "expansion", "closedwon", 200.0, closed_at=datetime(2026, 6, 20, tzinfo=UTC), company_id="C")  # fmt: skip
    deal(conn, "x2", "expansion", "closedlost", 700.0, closed_at=datetime(2025, 9, 30, tzinfo=UTC), company_id="C")  # fmt: skip
    deal(conn, "x3", "expansion", "closedwon", 800.0, closed_at=datetime(2025, 6, 15, tzinfo=UTC), company_id="C")  # fmt: skip
    # F is active and not yet due; no arr history: its current arr (5000) is its starting ARR.
    subscription(conn, "F1", "F", date(2025, 5, 1), date(2026, 8, 1), 5000.0, "active")
    # Not in the cohort: D started inside the window, E ended before it, G is deleted.
    subscription(conn, "D1", "D", date(2025, 8, 1), date(2026, 8, 1), 9000.0, "active")
    deal(conn, "x4", "expansion", "closedwon", 900.0, closed_at=datetime(2026, 2, 1, tzinfo=UTC), company_id="D")  # fmt: skip
    subscription(conn, "E1", "E", date(2024, 1, 1), date(2025, 1, 1), 9000.0, "churned")
    subscription(conn, "G1", "G", date(2025, 1, 1), date(2026, 1, 1), 9000.0, "active", deleted=True)  # fmt: skip


# --- the views ----------------------------------------------------------------------------


def test_funnel_counts_skipped_stages_as_reached_and_converts_stage_to_stage(conn):
    funnel_data(conn)
    set_clock(conn)
    views(conn)
    funnel = {
        (r["lead_source"], r["stage"]): r
        for r in rows(conn, "SELECT * FROM metrics.funnel_conversion")
    }
    reached = {s: funnel[("(all)", s)]["reached"] for s in ["lead", "mql", "sql", "opportunity", "customer"]}  # fmt: skip
    assert reached == {"lead": 5, "mql": 4, "sql": 3, "opportunity": 2, "customer": 1}
    entered = {s: funnel[("(all)", s)]["entered"] for s in ["lead", "mql", "sql"]}
    assert entered == {"lead": 5, "mql": 3, "sql": 3}
    assert funnel[("(all)", "lead")]["conversion_to_next"] == pytest.approx(0.8)
    assert funnel[("(all)", "mql")]["conversion_to_next"] == pytest.approx(0.75)
    assert funnel[("(all)", "sql")]["conversion_to_next"] == pytest.approx(2 / 3)
    assert funnel[("(all)", "opportunity")]["conversion_to_next"] == pytest.approx(0.5)
    assert funnel[("(all)", "customer")]["conversion_to_next"] is None
    assert funnel[("webinar", "mql")]["conversion_to_next"] == pytest.approx(1.0)
    assert funnel[("paid_ads", "mql")]["reached"] == 2
    assert funnel[("paid_ads", "mql")]["conversion_to_next"] == pytest.approx(0.5)
    assert funnel[("paid_ads", "opportunity")]["conversion_to_next"] == 0.0
    assert not any(source == "referral" for source, _ in funnel)  # deleted contact


def test_velocity_median_and_p90_over_completed_stays(conn):
    velocity_data(conn)
    set_clock(conn)
    views(conn)
    velocity = {r["stage"]: r for r in rows(conn, "SELECT * FROM metrics.stage_velocity")}
    mql = velocity["mql"]
    assert mql["completed_stays"] == 4
    assert mql["median_days"] == pytest.approx(3.0)  # stays of 1, 2, 4 and 10 days
    assert mql["p90_days"] == pytest.approx(8.2)  # 4 + 0.7 * (10 - 4)
    assert mql["open_stays"] == 1
    assert mql["median_open_days"] == pytest.approx(20.0)
    assert velocity["sql"]["completed_stays"] == 0 and velocity["sql"]["open_stays"] == 4
    assert velocity["sql"]["median_days"] is None
    assert velocity["onboarding"]["entity_type"] == "company"
    assert velocity["onboarding"]["median_days"] == pytest.approx(45.0)


def test_win_rate_counts_new_business_by_quarter_of_close_in_utc(conn):
    win_rate_data(conn)
    set_clock(conn)
    views(conn)
    conn.execute("SET TimeZone = 'Asia/Tokyo'")  # an analyst's session elsewhere
    periods = {r["period"]: r for r in rows(conn, "SELECT * FROM metrics.win_rate")}
    assert set(periods) == {"all", "2026-Q1", "2026-Q2"}
    assert (periods["all"]["won_deals"], periods["all"]["lost_deals"]) == (3, 4)
    assert periods["all"]["win_rate"] == pytest.approx(3 / 7)
    assert periods["all"]["won_amount"] == pytest.approx(700.0)
    assert periods["2026-Q1"]["win_rate"] == pytest.approx(2 / 3)
    assert periods["2026-Q2"]["win_rate"] == pytest.approx(1 / 4)
    assert periods["2026-Q2"]["quarter_start"] == date(2026, 4, 1)


def test_pipeline_counts_and_values_open_deals_by_stage_and_type(conn):
    pipeline_data(conn)
    deal(conn, "won", "new_business", "closedwon", 5000.0)
    set_clock(conn)
    views(conn)
    table = {
        (r["deal_stage"], r["deal_type"]): (r["open_deals"], r["pipeline_value"])
        for r in rows(conn, "SELECT * FROM metrics.pipeline")
    }
    assert table[("(all)", "(all)")] == (5, 650.0)
    assert table[("appointmentscheduled", "(all)")] == (2, 300.0)
    assert table[("qualifiedtobuy", "(all)")] == (2, 350.0)
    assert table[("qualifiedtobuy", "expansion")] == (1, 50.0)
    assert table[("contractsent", "renewal")] == (1, 0.0)
    assert table[("(all)", "new_business")] == (3, 600.0)
    missing = conn.execute(
        "SELECT deals_without_amount FROM metrics.pipeline "
        "WHERE deal_stage = '(all)' AND deal_type = '(all)'"
    ).fetchone()
    assert missing == (1,)


def test_sla_met_missed_and_pending(conn):
    sla_data(conn)
    set_clock(conn)
    views(conn)
    status = {
        r["contact_id"]: r["status"]
        for r in rows(conn, "SELECT * FROM metrics.sla_entries WHERE stage IN ('mql', 'sql')")
    }
    assert status == {
        "s1": "met",
        "s2": "missed",
        "s3": "missed",
        "s4": "pending",
        "s5": "pending",
        "s6": "met",
        "s7": "missed",
        "s8": "missed",
    }
    summary = {r["stage"]: r for r in rows(conn, "SELECT * FROM metrics.sla_compliance")}
    assert (summary["mql"]["met"], summary["mql"]["missed"], summary["mql"]["pending"]) == (1, 3, 1)
    assert summary["mql"]["compliance"] == pytest.approx(0.25)
    assert summary["sql"]["compliance"] == pytest.approx(0.5)
    assert summary["(all)"]["compliance"] == pytest.approx(2 / 6)
    assert summary["(all)"]["pending"] == 2


def test_sla_hours_come_from_the_config(conn, tmp_path):
    sla_data(conn)
    set_clock(conn)
    text = DEFAULT_PATH.read_text().replace("first_touch_hours: {mql: 48, sql: 24}",
                                            "first_touch_hours: {mql: 60, sql: 24}")  # fmt: skip
    assert "mql: 60" in text
    (tmp_path / "lifecycle.yaml").write_text(text)
    sla_views(conn, load_lifecycle_config(tmp_path / "lifecycle.yaml"))
    late_call = conn.execute(
        "SELECT status FROM metrics.sla_entries WHERE contact_id = 's2'"
    ).fetchone()
    assert late_call == ("met",)  # the call after 50 h is within 60 h


def test_retention_with_churn_contraction_and_expansion(conn):
    retention_data(conn)
    set_clock(conn)
    views(conn)
    [r] = rows(conn, "SELECT * FROM metrics.revenue_retention")
    assert r["window_start"] == datetime(2025, 7, 1, tzinfo=UTC)
    assert r["window_end"] == AS_OF
    assert (r["accounts"], r["subscriptions"], r["churned_subscriptions"]) == (4, 4, 1)
    assert r["starting_arr"] == pytest.approx(11000.0)
    assert r["churned_arr"] == pytest.approx(1000.0)
    assert r["contraction_arr"] == pytest.approx(500.0)
    assert r["expansion_arr"] == pytest.approx(1200.0)
    assert r["nrr"] == pytest.approx(10700 / 11000)
    assert r["grr"] == pytest.approx(9500 / 11000)
    accounts = {
        a["company_id"]: a for a in rows(conn, "SELECT * FROM metrics.revenue_retention_accounts")
    }
    assert set(accounts) == {"A", "B", "C", "F"}
    c = accounts["C"]
    assert (c["starting_arr"], c["expansion_deals_arr"], c["renewal_uplift_arr"]) == (
        3000.0,
        800.0,
        400.0,
    )
    assert c["net_retained_arr"] == pytest.approx(4200.0)  # what C pays today


def test_retention_follows_a_line_of_renewals(conn):
    # Monthly terms: 100 -> renewed at 120 (uplift 20) -> renewed at 90 (contraction 30),
    # which then churned (90). 100 - 90 - 30 + 20 = 0 retained.
    subscription(conn, "H1", "H", date(2025, 6, 15), date(2025, 7, 15), 100.0, "renewed")
    subscription(conn, "H2", "H", date(2025, 7, 15), date(2025, 8, 15), 120.0, "renewed", "H1")
    subscription(conn, "H3", "H", date(2025, 8, 15), date(2025, 9, 15), 90.0, "churned", "H2")
    set_clock(conn)
    views(conn)
    [h] = rows(conn, "SELECT * FROM metrics.revenue_retention_accounts")
    assert (h["starting_arr"], h["renewals"], h["churned_arr"]) == (100.0, 2, 90.0)
    assert (h["contraction_arr"], h["renewal_uplift_arr"]) == (30.0, 20.0)
    assert h["net_retained_arr"] == pytest.approx(0.0)
    [(grr, nrr)] = conn.execute("SELECT grr, nrr FROM metrics.revenue_retention").fetchall()
    assert grr == pytest.approx(0.0) and nrr == pytest.approx(0.0)


def test_grr_nets_an_accounts_contraction_against_its_own_expansion(conn):
    # K: 1000 at the window start, +500 expansion deal (arr 1500), renewed at 1200: contraction
    # 300, expansion 500, net 1200. GRR keeps the 1000 it started with: 100%, not 70%.
    change(conn, "subscription", "K1", datetime(2025, 6, 1, tzinfo=UTC), arr=1000.0)
    change(conn, "subscription", "K1", datetime(2025, 9, 1, tzinfo=UTC), arr=1500.0)
    subscription(conn, "K1", "K", date(2025, 6, 1), date(2026, 6, 1), 1500.0, "renewed")
    subscription(conn, "K2", "K", date(2026, 6, 1), date(2027, 6, 1), 1200.0, "active", "K1")
    deal(conn, "xk", "expansion", "closedwon", 500.0, closed_at=datetime(2025, 8, 30, tzinfo=UTC), company_id="K")  # fmt: skip
    set_clock(conn)
    views(conn)
    [r] = rows(conn, "SELECT * FROM metrics.revenue_retention")
    assert (r["starting_arr"], r["contraction_arr"], r["expansion_arr"]) == (1000.0, 300.0, 500.0)
    assert r["nrr"] == pytest.approx(1.2)
    assert r["grr"] == pytest.approx(1.0)


# --- the assets ---------------------------------------------------------------------------


def _materialize(db_path):
    resources = {
        # On --state-backend ducklake, this test's lake (where ``conn`` wrote).
        "state_store": StateStore.configured(db_path, clock="data"),
        "lifecycle": LifecycleConfigResource(path=str(DEFAULT_PATH)),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(metric_assets, resources=resources, instance=instance)
        assert result.success
        return {
            e.asset_key.to_user_string(): {
                k: v.value for k, v in e.materialization.metadata.items()
            }
            for e in result.get_asset_materialization_events()
        }


def test_materialize_reports_the_metrics_as_numbers(conn, db_path):
    for build in [funnel_data, velocity_data, win_rate_data, pipeline_data, sla_data, retention_data]:  # fmt: skip
        build(conn)
    set_clock(conn)
    conn.close()
    metadata = _materialize(db_path)
    assert metadata["metrics/funnel_conversion"]["mql_to_sql_conversion_pct"] == 75.0
    assert metadata["metrics/funnel_conversion"]["reached_customer"] == 1
    velocity = metadata["metrics/stage_velocity"]
    assert velocity["median_days_in_onboarding"] == pytest.approx(45.0)
    assert velocity["completed_stays_in_onboarding"] == 1
    assert metadata["metrics/win_rate"]["win_rate_pct"] == 42.9  # 3 / 7, in percent, rounded
    assert metadata["metrics/win_rate"]["win_rate_latest_quarter_pct"] == 25.0
    pipeline = metadata["metrics/pipeline"]
    # pipeline_data's five open deals, and no open deal among the other data sets
    assert (pipeline["open_deals"], pipeline["pipeline_value"]) == (5, 650.0)
    assert pipeline["pipeline_value_new_business"] == 600.0
    sla = metadata["metrics/sla_compliance"]
    # sla_data's 2 met, 4 missed, 2 pending; and never touched, long ago, so missed: the funnel
    # contacts' 6 entries into mql or sql (c1 twice, c2, c3, c5 twice) and velocity's 9 (v0..v3
    # twice, v-open once).
    assert (sla["sla_met"], sla["sla_missed"], sla["sla_pending"]) == (2, 4 + 6 + 9, 2)
    assert sla["sla_compliance_pct"] == 9.5  # 2 / 21
    retention = metadata["metrics/revenue_retention"]
    assert retention["nrr_pct"] == 97.3  # 10700 / 11000
    assert retention["grr_pct"] == 86.4  # 9500 / 11000
    assert all(
        isinstance(value, int | float) for values in metadata.values() for value in values.values()
    )


def test_materialize_without_data_reports_no_undefined_ratio(conn, db_path):
    conn.close()
    metadata = _materialize(db_path)
    assert set(metadata) == {f"metrics/{a.key.path[-1]}" for a in metric_assets}
    assert "win_rate_pct" not in metadata["metrics/win_rate"]
    assert metadata["metrics/win_rate"]["won_deals"] == 0
    assert "nrr_pct" not in metadata["metrics/revenue_retention"]
    assert "grr_pct" not in metadata["metrics/revenue_retention"]
    assert "sla_compliance_pct" not in metadata["metrics/sla_compliance"]
    assert metadata["metrics/pipeline"]["pipeline_value"] == 0.0
    assert "mql_to_sql_conversion_pct" not in metadata["metrics/funnel_conversion"]
