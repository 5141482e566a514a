"""Customers after the sale: subscriptions, seat usage, expansions, renewals and tickets.

A won deal starts a one-year subscription. Its hidden health (company fit plus noise)
decides whether it renews or churns at the end date. Customers heading for churn show it
first: their active seats fall month after month and they open more, angrier, higher
priority support tickets with worse satisfaction scores. Healthy customers sometimes buy
more seats mid-term (expansion deals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from revorch.simulator import vocabulary as v
from revorch.simulator.config import DAY, HOUR, SimulationConfig
from revorch.simulator.draws import calibrated_probability, gamma_seconds, pick, weighted
from revorch.simulator.events import EventSet, event_set
from revorch.simulator.pipeline import Deals, deal_events
from revorch.simulator.population import ROLE_CSM, Population

CHURN_RATE = 0.2
EXPANSION_RATE = 0.3
USAGE_UPDATES = 12


@dataclass(frozen=True)
class Customers:
    events: list[EventSet]
    deals: list[Deals]  # expansion and renewal deals, in id order
    active_company: np.ndarray  # companies with a subscription active at the window's end
    active_contact: np.ndarray
    active_csm: np.ndarray


def build_customers(config: SimulationConfig, population: Population, deals: Deals) -> Customers:
    """Subscriptions for won deals, then their usage, tickets, expansions and renewals."""
    rng = config.rng(4)
    _, t1 = config.window
    companies = population.companies
    csms = population.owners.of_role(ROLE_CSM)
    won = np.flatnonzero(deals.won & (deals.closed < t1))
    created = deals.closed[won] + rng.integers(HOUR, 2 * DAY, len(won))
    keep = created < t1
    won, created = won[keep], created[keep]
    gen = {
        "company": deals.company[won],
        "contact": deals.contact[won],
        "deal": won + deals.first,
        "seats": deals.seats[won],
        "arr": deals.final_amount[won],
        "created": created,
        "start_day": created // DAY + rng.integers(0, 15, len(won)),
        "renewal_of": np.full(len(won), -1),
        "health": companies.fit[deals.company[won]] + rng.normal(0.0, 1.0, len(won)),
        "csm": csms[rng.integers(0, len(csms), len(won))],
    }
    events: list[EventSet] = []
    extra_deals: list[Deals] = []
    tickets: list[pl.DataFrame] = []
    next_sub = 0
    next_deal = deals.first + len(deals.created)
    active_rows: list[dict[str, np.ndarray]] = []
    generation = 0
    while len(gen["company"]):
        m = len(gen["company"])
        ids = np.arange(m) + next_sub
        next_sub += m
        tier = companies.tier[gen["company"]]
        price = np.asarray(v.SEAT_PRICE)[tier]
        end_day = (
            pl.Series(gen["start_day"], dtype=pl.Int32)
            .cast(pl.Date)
            .dt.offset_by("1y")
            .cast(pl.Int32)
            .to_numpy()
            .astype(np.int64)
        )
        start_at = np.maximum(gen["start_day"] * DAY + 8 * HOUR, gen["created"] + HOUR)
        end_at = end_day * DAY + 9 * HOUR + rng.integers(0, 8 * HOUR, m)
        churn = rng.random(m) < calibrated_probability(-1.3 * gen["health"], CHURN_RATE)
        usage_start = rng.uniform(0.55, 0.9, m)
        slope = np.where(churn, -0.035, 0.01) + rng.normal(0.0, 0.008, m)
        seats_active = np.maximum(1, np.rint(gen["seats"] * usage_start)).astype(np.int64)

        created_props: dict[str, object] = {
            "company_id": gen["company"],
            "deal_id": gen["deal"],
            "plan": pick(v.PLANS, tier),
            "status": pl.repeat("active", m, eager=True),
            "start_date": gen["start_day"],
            "end_date": end_day,
            "arr": gen["arr"],
            "seats": gen["seats"],
            "seats_active": seats_active,
        }
        if generation > 0:
            created_props["renewal_of"] = gen["renewal_of"]
        created_props["created_at"] = gen["created"]
        events.append(
            event_set(
                f"subscription_created_{generation}",
                "subscription",
                ids,
                gen["created"],
                **created_props,
            )
        )

        # Expansion: healthy customers buy more seats mid-term.
        exp_rows = np.flatnonzero(~churn & (rng.random(m) < EXPANSION_RATE))
        exp_created = start_at[exp_rows] + rng.integers(120 * DAY, 250 * DAY, len(exp_rows))
        fits = exp_created < np.minimum(end_at[exp_rows] - 45 * DAY, t1)
        exp_rows, exp_created = exp_rows[fits], exp_created[fits]
        add_seats = np.maximum(
            1, np.rint(gen["seats"][exp_rows] * rng.uniform(0.2, 0.6, len(exp_rows)))
        ).astype(np.int64)
        expansion = _side_deal(
            rng,
            gen,
            exp_rows,
            exp_created,
            add_seats,
            price[exp_rows] * add_seats,
            won=rng.random(len(exp_rows)) < 0.7,
            gap_days=6.0,
            first=next_deal,
        )
        next_deal += len(exp_rows)
        extra_deals.append(expansion)
        events += deal_events(rng, population, expansion, "expansion", t1, first_stage=1)
        seats_after = gen["seats"].copy()
        arr_after = gen["arr"].copy()
        grown = expansion.won & (expansion.closed + DAY < np.minimum(end_at[exp_rows], t1))
        grow_rows = exp_rows[grown]
        grown_at = expansion.closed[grown] + DAY
        seats_after[grow_rows] += add_seats[grown]
        arr_after[grow_rows] += expansion.final_amount[grown]
        events.append(
            event_set(
                f"subscription_expanded_{generation}",
                "subscription",
                ids[grow_rows],
                grown_at,
                arr=arr_after[grow_rows],
                seats=seats_after[grow_rows],
            )
        )
        grown_at_all = np.full(m, np.iinfo(np.int64).max)
        grown_at_all[grow_rows] = grown_at

        # Monthly seat usage.
        month = np.arange(1, USAGE_UPDATES + 1)
        usage_at = (
            start_at[:, None]
            + np.rint(month * 30.4 * DAY).astype(np.int64)[None, :]
            + rng.integers(0, 12 * HOUR, (m, USAGE_UPDATES))
        )
        usage = np.clip(
            usage_start[:, None]
            + slope[:, None] * month[None, :]
            + rng.normal(0.0, 0.03, (m, USAGE_UPDATES)),
            0.05,
            1.0,
        )
        seats_then = np.where(
            usage_at > grown_at_all[:, None], seats_after[:, None], gen["seats"][:, None]
        )
        active = np.clip(np.rint(seats_then * usage), 1, seats_then).astype(np.int64)
        row, col = np.nonzero(usage_at < np.minimum(end_at, t1)[:, None])
        events.append(
            event_set(
                f"subscription_usage_{generation}",
                "subscription",
                ids[row],
                usage_at[row, col],
                seats_active=active[row, col],
            )
        )

        tickets.append(_ticket_plan(rng, gen, churn, start_at, np.minimum(end_at, t1)))

        # Renewal deal in the last months, then renewed or churned at the end date.
        ending = np.flatnonzero(end_at - 75 * DAY < t1)
        renew_seats = np.maximum(
            3, np.rint(seats_after * np.clip(usage_start + slope * 12 + 0.15, 0.6, 1.1))
        ).astype(np.int64)
        renew_arr = np.rint(renew_seats * price * rng.uniform(1.0, 1.08, m) / 100) * 100.0
        renewal = _side_deal(
            rng,
            gen,
            ending,
            end_at[ending] - 75 * DAY,
            renew_seats[ending],
            np.where(churn, arr_after, renew_arr)[ending],
            won=~churn[ending],
            gap_days=14.0,
            first=next_deal,
        )
        next_deal += len(ending)
        extra_deals.append(renewal)
        events += deal_events(rng, population, renewal, "renewal", t1, first_stage=1)
        ended = ending[end_at[ending] < t1]
        status = pick(("renewed", "churned"), churn[ended].astype(np.int64))
        events.append(
            event_set(
                f"subscription_ended_{generation}",
                "subscription",
                ids[ended],
                end_at[ended],
                status=status,
            )
        )
        still = np.flatnonzero(end_at >= t1)
        active_rows.append({k: gen[k][still] for k in ("company", "contact", "csm")})

        renewed = ended[~churn[ended]]
        renewal_ids = renewal.first + np.searchsorted(ending, renewed)
        gen = {
            "company": gen["company"][renewed],
            "contact": gen["contact"][renewed],
            "deal": renewal_ids,
            "seats": renew_seats[renewed],
            "arr": renew_arr[renewed],
            "created": end_at[renewed] + 60,
            "start_day": end_day[renewed],
            "renewal_of": ids[renewed],
            "health": gen["health"][renewed] + rng.normal(0.0, 0.5, len(renewed)),
            "csm": gen["csm"][renewed],
        }
        generation += 1

    events += _ticket_events(rng, pl.concat(tickets), t1)
    return Customers(
        events=events,
        deals=extra_deals,
        active_company=np.concatenate([r["company"] for r in active_rows]),
        active_contact=np.concatenate([r["contact"] for r in active_rows]),
        active_csm=np.concatenate([r["csm"] for r in active_rows]),
    )


def _side_deal(
    rng: np.random.Generator,
    gen: dict[str, np.ndarray],
    rows: np.ndarray,
    created: np.ndarray,
    seats: np.ndarray,
    amount: np.ndarray,
    won: np.ndarray,
    gap_days: float,
    first: int,
) -> Deals:
    """An expansion or renewal deal on existing subscriptions, from qualifiedtobuy on."""
    k = len(rows)
    steps = 4  # qualifiedtobuy .. contractsent
    gaps = np.rint(rng.uniform(0.6, 1.0, (k, steps)) * gap_days * DAY).astype(np.int64)
    stage_at = created[:, None] + np.cumsum(gaps, axis=1) - gaps[:, :1]
    reached = np.where(won, steps, 1 + rng.integers(0, steps, k))
    closed = created + np.cumsum(gaps, axis=1)[np.arange(k), reached - 1]
    amount = np.rint(np.asarray(amount, dtype=np.float64) / 100) * 100.0
    return Deals(
        first=first,
        company=gen["company"][rows],
        contact=gen["contact"][rows],
        owner=gen["csm"][rows],
        created=created,
        amount=amount,
        final_amount=amount,
        seats=seats,
        won=won,
        closed=closed,
        stage_at=stage_at,
        reached=reached,
    )


def _ticket_plan(
    rng: np.random.Generator,
    gen: dict[str, np.ndarray],
    churn: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
) -> pl.DataFrame:
    span = np.maximum(stop - start, 0)
    rate = (1.5 + 0.002 * np.minimum(gen["seats"], 2_000)) * np.where(churn, 2.5, 1.0)
    count = rng.poisson(rate * span / (365 * DAY))
    row = np.repeat(np.arange(len(span)), count)
    # Trouble piles up towards the end for customers about to leave.
    shape = np.where(churn[row], 0.6, 1.0)
    created = start[row] + np.rint(span[row] * rng.random(len(row)) ** shape).astype(np.int64)
    return pl.DataFrame(
        {
            "company": gen["company"][row],
            "contact": gen["contact"][row],
            "owner": gen["csm"][row],
            "created": created,
            "churn": churn[row],
        }
    )


def _ticket_events(rng: np.random.Generator, plan: pl.DataFrame, t1: int) -> list[EventSet]:
    plan = plan.sort("created", "company", maintain_order=True)
    n = plan.height
    ids = np.arange(n)
    churn = plan["churn"].to_numpy()
    created = plan["created"].to_numpy()
    upset = rng.random(n) < np.where(churn, 0.55, 0.12)
    category = weighted(rng, v.TICKET_CATEGORY_WEIGHTS, n)
    calm = weighted(rng, v.CALM_PRIORITY_WEIGHTS, n)
    angry = weighted(rng, v.UPSET_PRIORITY_WEIGHTS, n)
    priority = np.where(upset | (churn & (rng.random(n) < 0.5)), angry, calm)
    texts = [v.TICKET_TEXT[c] for c in v.TICKET_CATEGORIES]
    bodies = [t[1] for t in texts] + [t[2] for t in texts]
    opened_at = created + rng.integers(600, 8 * HOUR, n)
    waits = rng.random(n) < 0.35
    waiting_at = opened_at + rng.integers(HOUR, 2 * DAY, n)
    closed_at = (
        np.where(waits, waiting_at, opened_at)
        + HOUR
        + gamma_seconds(rng, 1.5, np.where(upset, 3 * DAY, DAY), n)
    )
    csat = np.clip(np.rint(rng.normal(4.4 - 1.4 * upset - 0.6 * churn, 0.8)), 1, 5).astype(np.int64)
    inside = created < t1
    opened = np.flatnonzero(inside & (opened_at < t1))
    waited = np.flatnonzero(inside & waits & (waiting_at < t1))
    closed = np.flatnonzero(inside & (closed_at < t1))
    new = np.flatnonzero(inside)
    events = [
        event_set(
            "ticket_created",
            "ticket",
            ids[new],
            created[new],
            company_id=plan["company"].to_numpy()[new],
            contact_id=plan["contact"].to_numpy()[new],
            owner_id=plan["owner"].to_numpy()[new],
            subject=pick([t[0] for t in texts], category[new]),
            body=pick(bodies, category[new] + len(texts) * upset[new]),
            category=pick(v.TICKET_CATEGORIES, category[new]),
            priority=pick(v.TICKET_PRIORITIES, priority[new]),
            status=pl.repeat("new", len(new), eager=True),
            created_at=created[new],
        ),
        event_set(
            "ticket_opened",
            "ticket",
            ids[opened],
            opened_at[opened],
            status=pl.repeat("open", len(opened), eager=True),
        ),
        event_set(
            "ticket_waiting",
            "ticket",
            ids[waited],
            waiting_at[waited],
            status=pl.repeat("waiting", len(waited), eager=True),
        ),
        event_set(
            "ticket_closed",
            "ticket",
            ids[closed],
            closed_at[closed],
            status=pl.repeat("closed", len(closed), eager=True),
            closed_at=closed_at[closed],
            csat=csat[closed],
        ),
    ]
    return events
