"""The funnel: lifecycle progress of contacts and new-business deals through the stages.

Conversion odds come from the company's hidden fit, the contact's hidden engagement, the
intent it showed (replies, meetings, form fills, pricing visits), lead source and seniority.
Headline rates are calibrated: about 38% of leads become MQLs, about 35% of MQLs become
SQLs and about a quarter of opportunities are won. Bigger companies take longer to close.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from revorch.experiments.assignment import held_out
from revorch.simulator import vocabulary as v
from revorch.simulator.activities import deal_activities
from revorch.simulator.config import DAY, HOUR, SimulationConfig
from revorch.simulator.draws import calibrated_probability, gamma_seconds, pick, weighted
from revorch.simulator.events import EventSet, event_set
from revorch.simulator.population import Population

MQL_RATE, SQL_RATE, WIN_RATE = 0.38, 0.35, 0.26
# Intermediate stages a deal moves through before it is closed.
OPEN_STAGES = v.DEAL_STAGES[:5]


@dataclass(frozen=True)
class Deals:
    """Deals with their stage timetable; deal ``i`` is ``d-<first + i + 1>``."""

    first: int
    company: np.ndarray
    contact: np.ndarray
    owner: np.ndarray
    created: np.ndarray
    amount: np.ndarray  # when the deal is created
    final_amount: np.ndarray  # when it is won, after discounts
    seats: np.ndarray
    won: np.ndarray
    closed: np.ndarray  # epoch seconds, may lie after the window (still open then)
    stage_at: np.ndarray  # (deals, stages) epoch seconds of reaching each open stage
    reached: np.ndarray  # open stages reached before closing


@dataclass(frozen=True)
class Conversion:
    """Each contact's MQL -> SQL step as drawn (contact ``i`` is ``c-<i + 1>``): what a
    playbook's known effect acts on, kept so a test can read the true effect back."""

    mql_at: np.ndarray  # epoch seconds; the contact is an MQL from then on if ``mql``
    mql: np.ndarray
    sql_at: np.ndarray  # when it becomes an SQL, if it converts
    decided_at: np.ndarray  # the first of its SQL and disqualification moments
    base_odds: np.ndarray  # SQL odds without any playbook (0 for contacts never MQL)
    undecided: np.ndarray  # decided after ``effects_from``: the effects act on it


@dataclass(frozen=True)
class Funnel:
    events: list[EventSet]
    deals: Deals
    activities: pl.DataFrame
    conversion: Conversion


def with_playbook_effects(
    odds: np.ndarray,
    contacts: np.ndarray,
    effects: tuple[tuple[str, float], ...],
    holdout_share: float,
    undecided: np.ndarray | None = None,
) -> np.ndarray:
    """``odds`` of the contacts at indexes ``contacts``, raised by each playbook's effect for
    the contacts it treats: those its holdout assignment (the policy's own hash) keeps in
    treatment, and, given ``undecided``, only where it is true. Draws no random number, so a
    history without effects is unchanged."""
    if not effects:
        return odds
    ids = [f"c-{i + 1:07d}" for i in contacts]
    out = odds.astype(np.float64, copy=True)
    acting = out > 0 if undecided is None else (out > 0) & undecided
    for playbook, points in effects:
        treated = np.fromiter(
            (not held_out(playbook, "contact", c, holdout_share) for c in ids), bool, len(ids)
        )
        out = np.where(treated & acting, np.clip(out + points, 0.0, 1.0), out)
    return out


def true_uplift(
    config: SimulationConfig,
    conversion: Conversion,
    playbook: str,
    contacts: np.ndarray,
    exposed_at: np.ndarray,
    horizon_seconds: int,
) -> np.ndarray:
    """The simulator's own truth for the ``next_stage`` outcome: for each contact (by index)
    exposed to ``playbook`` at ``exposed_at`` (epoch seconds), how much being treated rather
    than held out raises its chance of moving on within ``horizon_seconds``. Non-zero only
    for an MQL still undecided at its exposure whose SQL moment falls within the horizon (a
    lead's next stage is MQL, whatever the arm); the other playbooks' effects stay as its
    arms in them have them."""
    points = dict(config.playbook_effects).get(playbook, 0.0)
    if not points:
        return np.zeros(len(contacts))
    c = conversion
    undecided = c.undecided[contacts]
    others = tuple((p, x) for p, x in config.playbook_effects if p != playbook)
    odds = with_playbook_effects(
        c.base_odds[contacts], contacts, others, config.holdout_share, undecided
    )
    raised = np.clip(odds + points, 0.0, 1.0)
    counts = (
        c.mql[contacts]
        & undecided
        & (odds > 0)
        & (c.mql_at[contacts] <= exposed_at)
        & (c.decided_at[contacts] > exposed_at)
        & (c.sql_at[contacts] <= exposed_at + horizon_seconds)
        & (c.sql_at[contacts] < config.window[1])
    )
    return np.where(counts, raised - odds, 0.0)


def build_funnel(config: SimulationConfig, population: Population, intent: np.ndarray) -> Funnel:
    """Lifecycle events for contacts and the new-business deals they open."""
    rng = config.rng(3)
    _, t1 = config.window
    contacts, companies = population.contacts, population.companies
    n = len(contacts)
    fit = companies.fit[contacts.company]
    source = np.asarray(v.LEAD_SOURCE_EFFECT)[contacts.source]
    score = (
        1.0 * fit
        + 0.7 * np.log1p(intent)
        + 0.3 * contacts.engagement
        + source
        + 0.3 * contacts.seniority
        + rng.normal(0.0, 0.4, n)
    )
    mql_at = contacts.created + HOUR + gamma_seconds(rng, 2.0, 6 * DAY, n)
    mql = (rng.random(n) < calibrated_probability(score, MQL_RATE)) & (mql_at < t1)
    attempted_at = mql_at + rng.integers(HOUR, 3 * DAY, n)
    sql_at = attempted_at + HOUR + gamma_seconds(rng, 2.0, 5 * DAY, n)
    base_odds = np.zeros(n)
    base_odds[mql] = calibrated_probability(1.3 * score[mql], SQL_RATE)
    # The same draws in the same order as ever (a history is unchanged), but the moment
    # each contact is decided is known before its outcome, so effects can depend on it.
    converts = rng.random(n)
    disqualifies = rng.random(n)
    disqualified_at = attempted_at + HOUR + gamma_seconds(rng, 2.0, 10 * DAY, n)
    decided_at = np.minimum(sql_at, disqualified_at)
    start = config.effects_start
    undecided = np.ones(n, bool) if start is None else decided_at > start
    sql_odds = with_playbook_effects(
        base_odds,
        np.arange(n),
        config.playbook_effects,
        config.holdout_share,
        None if start is None else undecided,
    )
    sql = mql & (converts < sql_odds) & (sql_at < t1)
    disqualified = mql & ~sql & (disqualifies < 0.8)
    cold = ~mql & (rng.random(n) < 0.2)
    cold_at = contacts.created + rng.integers(20 * DAY, 90 * DAY, n)
    deleted = cold & (rng.random(n) < 0.03)
    deleted_at = cold_at + rng.integers(30 * DAY, 200 * DAY, n)
    ae = population.companies.owner[contacts.company]

    events = [
        _contact_update(mql, mql_at, t1, "contact_mql", lifecycle_stage="marketingqualifiedlead"),
        _contact_update(
            mql, attempted_at, t1, "contact_attempted", lead_status="attempted_to_contact"
        ),
        _contact_update(
            sql,
            sql_at,
            t1,
            "contact_sql",
            lifecycle_stage="salesqualifiedlead",
            lead_status="connected",
            owner_id=ae,
        ),
        _contact_update(
            disqualified,
            disqualified_at,
            t1,
            "contact_disqualified",
            lead_status=pick(("unqualified", "bad_timing"), rng.integers(0, 2, n)),
        ),
        _contact_update(cold, cold_at, t1, "contact_unqualified", lead_status="unqualified"),
    ]
    gone = np.flatnonzero(deleted & (deleted_at < t1))
    events.append(event_set("contact_deleted", "contact", gone, deleted_at[gone], op="delete"))

    # One new-business deal per company, opened by its first sales-qualified contact.
    candidates = np.flatnonzero(sql)
    candidates = candidates[np.argsort(sql_at[candidates], kind="stable")]
    _, first = np.unique(contacts.company[candidates], return_index=True)
    opener = np.sort(candidates[first])
    created = sql_at[opener] + rng.integers(DAY, 7 * DAY, len(opener))
    opener = opener[created < t1]
    created = created[created < t1]
    opener = opener[np.argsort(created, kind="stable")]
    created = np.sort(created, kind="stable")
    deals = _new_business(rng, population, opener, created, score[opener])
    events += deal_events(rng, population, deals, "new_business", t1)

    # The contact follows its deal through the lifecycle.
    idx = np.arange(len(opener))
    events.append(
        _contact_update(
            np.ones(len(opener), bool),
            created + 60,
            t1,
            "contact_opportunity",
            obj=opener,
            lifecycle_stage="opportunity",
            lead_status="open_deal",
        )
    )
    events.append(
        _contact_update(
            deals.won,
            deals.closed + 120,
            t1,
            "contact_customer",
            obj=opener,
            lifecycle_stage="customer",
        )
    )
    events.append(
        _contact_update(
            ~deals.won,
            deals.closed + 120,
            t1,
            "contact_deal_lost",
            obj=opener,
            lead_status="bad_timing",
        )
    )
    stop = np.minimum(deals.closed, t1)
    activities = deal_activities(
        rng,
        idx + deals.first,
        deals.contact,
        deals.company,
        deals.owner,
        deals.created,
        stop,
        1.5 + 1.2 * deals.reached,
    )
    conversion = Conversion(mql_at, mql, sql_at, decided_at, base_odds, undecided)
    return Funnel(events, deals, activities, conversion)


def _contact_update(
    mask: np.ndarray,
    at: np.ndarray,
    t1: int,
    name: str,
    obj: np.ndarray | None = None,
    **props: object,
) -> EventSet:
    """Contact events for rows where ``mask`` holds and the change falls inside the window."""
    keep = np.flatnonzero(mask & (at < t1))
    objects = keep if obj is None else obj[keep]
    values = {
        k: (pl.repeat(p, len(keep), eager=True) if isinstance(p, str) else _take(p, keep))
        for k, p in props.items()
    }
    return event_set(name, "contact", objects, at[keep], **values)


def _take(values: object, rows: np.ndarray) -> object:
    if isinstance(values, pl.Series):
        return values.gather(pl.Series(rows, dtype=pl.Int64))
    return np.asarray(values)[rows]


def _new_business(
    rng: np.random.Generator,
    population: Population,
    opener: np.ndarray,
    created: np.ndarray,
    score: np.ndarray,
) -> Deals:
    companies = population.companies
    company = population.contacts.company[opener]
    tier = companies.tier[company]
    seats = np.clip(
        np.rint(companies.employees[company] * rng.uniform(0.04, 0.3, len(opener))), 3, 3_000
    ).astype(np.int64)
    amount = np.rint(seats * np.asarray(v.SEAT_PRICE)[tier] / 100) * 100.0
    win_score = 0.8 * score + rng.normal(0.0, 0.3, len(opener))
    won = rng.random(len(opener)) < calibrated_probability(win_score, WIN_RATE)
    lost_after = 1 + weighted(rng, (35, 25, 20, 12, 8), len(opener))
    reached = np.where(won, len(OPEN_STAGES), lost_after)
    cycle = np.asarray(v.TIER_CYCLE_FACTOR)[tier]
    gaps = 2 * HOUR + np.rint(
        rng.gamma(2.0, 1.0, (len(opener), len(OPEN_STAGES))) * 4.5 * DAY * cycle[:, None]
    ).astype(np.int64)
    stage_at = created[:, None] + np.cumsum(gaps, axis=1) - gaps[:, :1]
    closed = created + np.cumsum(gaps, axis=1)[np.arange(len(opener)), reached - 1]
    return Deals(
        first=0,
        company=company,
        contact=opener,
        owner=companies.owner[company],
        created=created,
        amount=amount,
        final_amount=np.rint(amount * rng.uniform(0.85, 1.0, len(opener)) / 100) * 100.0,
        seats=seats,
        won=won,
        closed=closed,
        stage_at=stage_at,
        reached=reached,
    )


def deal_events(
    rng: np.random.Generator,
    population: Population,
    deals: Deals,
    deal_type: str,
    t1: int,
    first_stage: int = 0,
) -> list[EventSet]:
    """Creation, one upsert per stage move, and the close of each deal inside the window.

    ``stage_at[:, k]`` is when the deal reached ``OPEN_STAGES[first_stage + k]``.
    """
    n = len(deals.created)
    ids = np.arange(n) + deals.first
    company_names = population.companies.names["name"].gather(
        pl.Series(deals.company, dtype=pl.Int64)
    )
    label = {"new_business": "New business", "renewal": "Renewal", "expansion": "Expansion"}
    expected = deals.created + np.rint(
        (deals.closed - deals.created) * rng.uniform(0.6, 1.3, n)
    ).astype(np.int64)
    created = event_set(
        f"deal_{deal_type}_created",
        "deal",
        ids,
        deals.created,
        company_id=deals.company,
        contact_id=deals.contact,
        owner_id=deals.owner,
        name=company_names + f" - {label[deal_type]}",
        deal_type=pl.repeat(deal_type, n, eager=True),
        stage=pl.repeat(OPEN_STAGES[first_stage], n, eager=True),
        amount=deals.amount,
        currency=pl.repeat("USD", n, eager=True),
        close_date=expected // DAY,
        created_at=deals.created,
    )
    steps = deals.stage_at.shape[1]
    moved = (np.arange(steps)[None, :] < deals.reached[:, None]) & (deals.stage_at < t1)
    moved[:, 0] = False
    row, step = np.nonzero(moved)
    moves = event_set(
        f"deal_{deal_type}_stage",
        "deal",
        ids[row],
        deals.stage_at[row, step],
        stage=pick(OPEN_STAGES, first_stage + step),
    )
    won = np.flatnonzero(deals.won & (deals.closed < t1))
    closed_won = event_set(
        f"deal_{deal_type}_won",
        "deal",
        ids[won],
        deals.closed[won],
        stage=pl.repeat("closedwon", len(won), eager=True),
        amount=deals.final_amount[won],
        close_date=deals.closed[won] // DAY,
        closed_at=deals.closed[won],
    )
    lost = np.flatnonzero(~deals.won & (deals.closed < t1))
    closed_lost = event_set(
        f"deal_{deal_type}_lost",
        "deal",
        ids[lost],
        deals.closed[lost],
        stage=pl.repeat("closedlost", len(lost), eager=True),
        close_date=deals.closed[lost] // DAY,
        closed_at=deals.closed[lost],
        lost_reason=pick(v.LOST_REASONS, weighted(rng, v.LOST_REASON_WEIGHTS, len(lost))),
    )
    return [created, moves, closed_won, closed_lost]
