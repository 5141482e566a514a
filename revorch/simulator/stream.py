"""A live trickle of CRM changes that continues where the simulated history ends.

Each batch mixes new leads, engagement on existing contacts (weighted towards the engaged
ones), stage moves of deals still open at the end of the history (closing them won or lost
by their hidden outcome), new support tickets from current customers and the progress of
tickets opened earlier in the run. Every event is stamped with the wall-clock time.

Event ids carry a run tag, the run's start time to the millisecond
(``sim-42-L261124131400123-0000000001``), and so do the ids of objects a run creates
(``c-L261124131400123-0000001``), so two runs never collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from revorch.landing import LandingZone
from revorch.simulator import vocabulary as v
from revorch.simulator.activities import MEETING, WEB_VISIT
from revorch.simulator.config import DAY, SimulationConfig
from revorch.simulator.draws import mixed, pick, sigmoid, weighted
from revorch.simulator.events import ID_FORMATS, EventSet, event_set, render_lines
from revorch.simulator.history import batch_bytes
from revorch.simulator.pipeline import OPEN_STAGES
from revorch.simulator.population import ROLE_SDR, Contacts, contact_created_events
from revorch.simulator.world import World, build_world

CONTRACT_SENT = OPEN_STAGES.index("contractsent")


def stream_live(
    zone: LandingZone,
    config: SimulationConfig,
    *,
    events_per_batch: int = 200,
    interval_seconds: float = 2.0,
    max_batches: int | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Path]:
    """Publish a batch of about ``events_per_batch`` live changes every ``interval_seconds``.

    Yields each published batch's path. Runs until ``max_batches`` batches are written or
    ``stop`` is set (checked between batches, and it cuts the wait short).
    """
    stop = stop or threading.Event()
    started = datetime.now(UTC)
    live = _Live(
        build_world(config), started.strftime("%y%m%d%H%M%S") + f"{started.microsecond // 1000:03d}"
    )
    written = 0
    while not stop.is_set() and (max_batches is None or written < max_batches):
        now = int(time.time())
        lines = live.batch(now, events_per_batch)
        with zone.open_batch(config.source) as tmp:
            tmp.write_bytes(batch_bytes(lines))
        written += 1
        yield zone.incoming_dir / tmp.name.removesuffix(".part")
        if max_batches is not None and written >= max_batches:
            break
        stop.wait(interval_seconds)


class _Live:
    """The state a live run moves forward: open deals and the tickets it opened."""

    def __init__(self, world: World, tag: str) -> None:
        self.world = world
        self.config = world.config
        self.rng = np.random.default_rng([world.config.seed, 7, int(tag)])
        self.tag = tag
        self.event_prefix = f"sim-{world.config.seed}-L{tag}-"
        self.seq = 0
        self.created = {"contact": 0, "activity": 0, "ticket": 0}
        open_deals = world.open_deals()
        self.deal = open_deals.deal
        self.stage = open_deals.stage
        self.won = open_deals.won
        self.deal_open = np.ones(len(self.deal), dtype=bool)
        contacts = world.population.contacts
        weight = np.exp(0.8 * contacts.engagement)
        self.contact_weight = weight / weight.sum()
        self.customers = len(world.customers.active_company)
        self.ticket_status = np.zeros(0, dtype=np.int64)  # 0 new, 1 open, 2 closed

    def batch(self, now: int, size: int) -> pl.DataFrame:
        n_leads = max(1, round(0.1 * size))
        n_deals = min(round(0.15 * size), int(self.deal_open.sum()))
        n_new_tickets = round(0.05 * size) if self.customers else 0
        n_ticket_moves = min(round(0.1 * size), int((self.ticket_status < 2).sum()))
        n_activities = max(0, size - n_leads - n_deals - n_new_tickets - n_ticket_moves)
        sets = [
            *self._ticket_moves(now, n_ticket_moves),
            self._new_leads(now, n_leads),
            *self._activities(now, n_activities),
            *self._deal_moves(now, n_deals),
            self._new_tickets(now, n_new_tickets),
        ]
        frames = []
        for events in sets:
            if events.frame.height == 0:
                continue
            seq = pl.int_range(self.seq, self.seq + events.frame.height, dtype=pl.Int64)
            self.seq += events.frame.height
            frames.append(
                events.frame.select(line=render_lines(events, seq + 1, self.event_prefix))
            )
        return pl.concat(frames) if frames else pl.DataFrame(schema={"line": pl.String})

    def _new_ids(self, object_type: str, count: int) -> tuple[np.ndarray, str]:
        first = self.created[object_type]
        self.created[object_type] += count
        prefix = ID_FORMATS[object_type][0] + f"L{self.tag}-"
        return np.arange(first, first + count), prefix

    def _new_leads(self, now: int, count: int) -> EventSet:
        population = self.world.population
        rng = self.rng
        ids, prefix = self._new_ids("contact", count)
        companies = population.companies
        sdrs = population.owners.of_role(ROLE_SDR)
        contacts = Contacts(
            company=rng.integers(0, len(companies), count),
            created=np.full(count, now),
            owner=sdrs[rng.integers(0, len(sdrs), count)],
            source=weighted(rng, v.LEAD_SOURCE_WEIGHTS, count),
            seniority=np.zeros(count),
            engagement=np.zeros(count),
        )
        title = weighted(rng, v.JOB_TITLE_WEIGHTS, count)
        events = contact_created_events(rng, contacts, companies, title)
        frame = events.frame.with_columns(obj=pl.Series(ids, dtype=pl.Int64))
        return replace(events, name="livecontact_created_events", frame=frame, id_prefix=prefix)

    def _activities(self, now: int, count: int) -> list[EventSet]:
        """Emails and website visits of existing contacts, the engaged ones more often."""
        rng = self.rng
        contacts = self.world.population.contacts
        contact = rng.choice(len(contacts), size=count, p=self.contact_weight)
        warmth = sigmoid(1.3 * contacts.engagement[contact] - 0.5)
        kind = mixed(rng, v.COLD_ACTIVITY_MIX, v.WARM_ACTIVITY_MIX, warmth)
        url = mixed(rng, v.COLD_URL_WEIGHTS, v.WARM_URL_WEIGHTS, warmth)
        visit = np.flatnonzero(kind == WEB_VISIT)
        email = np.flatnonzero(kind < MEETING)
        ids, prefix = self._new_ids("activity", len(visit) + len(email))
        at = np.full(count, now)
        visits = event_set(
            "live_web_visit",
            "activity",
            ids[: len(visit)],
            at[visit],
            activity_type=pl.repeat("web_visit", len(visit), eager=True),
            contact_id=contact[visit],
            company_id=contacts.company[contact[visit]],
            url=pick(v.WEB_URLS, url[visit]),
            activity_at=at[visit],
        )
        emails = event_set(
            "live_email",
            "activity",
            ids[len(visit) :],
            at[email],
            activity_type=pick(v.ACTIVITY_TYPES, kind[email]),
            contact_id=contact[email],
            company_id=contacts.company[contact[email]],
            owner_id=contacts.owner[contact[email]],
            subject=pick(v.EMAIL_SUBJECTS, rng.integers(0, len(v.EMAIL_SUBJECTS), len(email))),
            activity_at=at[email],
        )
        return [replace(visits, id_prefix=prefix), replace(emails, id_prefix=prefix)]

    def _deal_moves(self, now: int, count: int) -> list[EventSet]:
        rng = self.rng
        pick_rows = rng.choice(np.flatnonzero(self.deal_open), size=count, replace=False)
        at_end = self.stage[pick_rows] >= CONTRACT_SENT
        gives_up = ~self.won[pick_rows] & (rng.random(count) < 0.25)
        closes = at_end | gives_up
        move = pick_rows[~closes]
        self.stage[move] += 1
        won = pick_rows[closes & self.won[pick_rows]]
        lost = pick_rows[closes & ~self.won[pick_rows]]
        self.deal_open[won] = False
        self.deal_open[lost] = False
        day = now // DAY
        return [
            event_set(
                "live_deal_stage",
                "deal",
                self.deal[move],
                np.full(len(move), now),
                stage=pick(OPEN_STAGES, self.stage[move]),
            ),
            event_set(
                "live_deal_won",
                "deal",
                self.deal[won],
                np.full(len(won), now),
                stage=pl.repeat("closedwon", len(won), eager=True),
                close_date=np.full(len(won), day),
                closed_at=np.full(len(won), now),
            ),
            event_set(
                "live_deal_lost",
                "deal",
                self.deal[lost],
                np.full(len(lost), now),
                stage=pl.repeat("closedlost", len(lost), eager=True),
                close_date=np.full(len(lost), day),
                closed_at=np.full(len(lost), now),
                lost_reason=pick(v.LOST_REASONS, weighted(rng, v.LOST_REASON_WEIGHTS, len(lost))),
            ),
        ]

    def _new_tickets(self, now: int, count: int) -> EventSet:
        rng = self.rng
        customers = self.world.customers
        row = rng.integers(0, max(1, self.customers), count)
        ids, prefix = self._new_ids("ticket", count)
        self.ticket_status = np.concatenate([self.ticket_status, np.zeros(count, np.int64)])
        category = weighted(rng, v.TICKET_CATEGORY_WEIGHTS, count)
        upset = rng.random(count) < 0.15
        texts = [v.TICKET_TEXT[c] for c in v.TICKET_CATEGORIES]
        bodies = [t[1] for t in texts] + [t[2] for t in texts]
        priority = np.where(
            upset,
            weighted(rng, v.UPSET_PRIORITY_WEIGHTS, count),
            weighted(rng, v.CALM_PRIORITY_WEIGHTS, count),
        )
        events = event_set(
            "live_ticket_created",
            "ticket",
            ids,
            np.full(count, now),
            company_id=customers.active_company[row] if count else np.zeros(0, np.int64),
            contact_id=customers.active_contact[row] if count else np.zeros(0, np.int64),
            owner_id=customers.active_csm[row] if count else np.zeros(0, np.int64),
            subject=pick([t[0] for t in texts], category),
            body=pick(bodies, category + len(texts) * upset),
            category=pick(v.TICKET_CATEGORIES, category),
            priority=pick(v.TICKET_PRIORITIES, priority),
            status=pl.repeat("new", count, eager=True),
            created_at=np.full(count, now),
        )
        return replace(events, id_prefix=prefix)

    def _ticket_moves(self, now: int, count: int) -> list[EventSet]:
        rng = self.rng
        prefix = ID_FORMATS["ticket"][0] + f"L{self.tag}-"
        rows = rng.choice(np.flatnonzero(self.ticket_status < 2), size=count, replace=False)
        opening = rows[self.ticket_status[rows] == 0]
        closing = rows[self.ticket_status[rows] == 1]
        self.ticket_status[rows] += 1
        csat = np.clip(np.rint(rng.normal(4.2, 0.9, len(closing))), 1, 5).astype(np.int64)
        opened = event_set(
            "live_ticket_opened",
            "ticket",
            opening,
            np.full(len(opening), now),
            status=pl.repeat("open", len(opening), eager=True),
        )
        closed = event_set(
            "live_ticket_closed",
            "ticket",
            closing,
            np.full(len(closing), now),
            status=pl.repeat("closed", len(closing), eager=True),
            closed_at=np.full(len(closing), now),
            csat=csat,
        )
        return [replace(opened, id_prefix=prefix), replace(closed, id_prefix=prefix)]
