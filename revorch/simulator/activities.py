"""Engagement activities: marketing touches on every contact and sales touches on deals.

Activities are collected as frames with one row per activity (``type``, ``contact``,
``company``, ``deal`` or -1, ``owner`` or -1, ``at``, ``text`` index) and numbered in time
order once all are known, so ``act-…`` ids grow with time.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from revorch.simulator import vocabulary as v
from revorch.simulator.config import DAY, SimulationConfig
from revorch.simulator.draws import mixed, sigmoid
from revorch.simulator.events import EventSet, event_set
from revorch.simulator.population import Population

EMAIL_SENT, EMAIL_OPENED, EMAIL_REPLIED, MEETING, CALL, WEB_VISIT, FORM_FILL = range(7)
PRICING_URL = v.WEB_URLS.index("/pricing")
ACTIVITY_COLUMNS = ("type", "contact", "company", "deal", "owner", "at", "text")


def marketing_activities(
    config: SimulationConfig, population: Population
) -> tuple[pl.DataFrame, np.ndarray]:
    """Touches in the months after each contact is created, and each contact's intent.

    Intent counts high-intent touches (replies, meetings, form fills, pricing-page visits);
    it drives conversion, and more engaged contacts both touch more and touch warmer.
    """
    rng = config.rng(2)
    _, t1 = config.window
    contacts = population.contacts
    n = len(contacts)
    horizon = np.minimum(180 * DAY, t1 - contacts.created - 600)
    rate = 2.1 * np.exp(0.6 * contacts.engagement) * horizon / (180 * DAY)
    count = rng.poisson(np.maximum(rate, 0.0))
    contact = np.repeat(np.arange(n), count)
    at = (
        contacts.created[contact]
        + 300
        + np.rint(horizon[contact] * rng.random(len(contact)) ** 1.4).astype(np.int64)
    )
    warmth = sigmoid(1.3 * contacts.engagement - 0.5)[contact]
    kind = mixed(rng, v.COLD_ACTIVITY_MIX, v.WARM_ACTIVITY_MIX, warmth)
    url = mixed(rng, v.COLD_URL_WEIGHTS, v.WARM_URL_WEIGHTS, warmth)
    text = rng.integers(0, 1_000_000, len(contact))
    text = np.where(kind == WEB_VISIT, url, text)
    intent_touch = np.isin(kind, [EMAIL_REPLIED, MEETING, FORM_FILL]) | (
        (kind == WEB_VISIT) & (url == PRICING_URL)
    )
    intent = np.bincount(contact[intent_touch], minlength=n)
    frame = pl.DataFrame(
        {
            "type": kind,
            "contact": contact,
            "company": contacts.company[contact],
            "deal": np.full(len(contact), -1),
            "owner": np.where(kind < WEB_VISIT, contacts.owner[contact], -1),
            "at": at,
            "text": text,
        }
    )
    return frame, intent


def deal_activities(
    rng: np.random.Generator,
    deal: np.ndarray,
    contact: np.ndarray,
    company: np.ndarray,
    owner: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    mean_count: np.ndarray,
) -> pl.DataFrame:
    """Meetings, calls and emails by the deal owner between ``start`` and ``stop``."""
    count = rng.poisson(np.maximum(mean_count, 0.0))
    count[stop <= start] = 0
    row = np.repeat(np.arange(len(deal)), count)
    span = (stop - start)[row]
    at = start[row] + np.rint(span * rng.random(len(row))).astype(np.int64)
    kind = np.asarray([MEETING, CALL, EMAIL_SENT])[
        rng.choice(3, size=len(row), p=[0.4, 0.35, 0.25])
    ]
    return pl.DataFrame(
        {
            "type": kind,
            "contact": contact[row],
            "company": company[row],
            "deal": deal[row],
            "owner": owner[row],
            "at": at,
            "text": rng.integers(0, 1_000_000, len(row)),
        }
    )


def activity_events(rng: np.random.Generator, parts: list[pl.DataFrame]) -> list[EventSet]:
    """Number all activities in time order and split them into event sets by shape."""
    log = (
        pl.concat([p.select(ACTIVITY_COLUMNS).cast(pl.Int64) for p in parts])
        .sort("at", "contact", "type", maintain_order=True)
        .with_row_index("obj")
    )
    # The CRM records an activity a little after it happens.
    log = log.with_columns(
        logged=pl.col("at") + pl.Series(rng.integers(5, 900, log.height), dtype=pl.Int64),
        activity_type=pl.col("type").replace_strict(dict(enumerate(v.ACTIVITY_TYPES))),
    )
    sets = []
    shapes = (
        ("activity_email", [EMAIL_SENT, EMAIL_OPENED, EMAIL_REPLIED], v.EMAIL_SUBJECTS, False),
        ("activity_meeting", [MEETING], v.MEETING_SUBJECTS, True),
        ("activity_call", [CALL], v.CALL_SUBJECTS, True),
        ("activity_web_visit", [WEB_VISIT], None, False),
        ("activity_form_fill", [FORM_FILL], v.FORM_SUBJECTS, False),
    )
    for name, types, subjects, has_body in shapes:
        for with_deal in (False, True):
            rows = log.filter(pl.col("type").is_in(types), (pl.col("deal") >= 0) == with_deal)
            if rows.height == 0:
                continue
            props: dict[str, object] = {
                "activity_type": rows["activity_type"],
                "contact_id": rows["contact"],
                "company_id": rows["company"],
            }
            if with_deal:
                props["deal_id"] = rows["deal"]
            if types[0] != WEB_VISIT and types[0] != FORM_FILL:
                props["owner_id"] = rows["owner"]
            text = rows["text"].to_numpy()
            if subjects is None:
                props["url"] = _pick(v.WEB_URLS, text)
            else:
                props["subject"] = _pick(subjects, text)
                if types[0] == FORM_FILL:
                    props["url"] = _pick(v.FORM_URLS, text)
            if has_body:
                props["body"] = _pick(v.MEETING_NOTES, text // 7)
            props["activity_at"] = rows["at"]
            suffix = "_deal" if with_deal else ""
            sets.append(
                event_set(
                    name + suffix,
                    "activity",
                    rows["obj"].to_numpy(),
                    rows["logged"].to_numpy(),
                    **props,
                )
            )
    return sets


def _pick(values: tuple[str, ...], index: np.ndarray) -> pl.Series:
    return pl.Series(values, dtype=pl.String).gather(pl.Series(index % len(values)))
