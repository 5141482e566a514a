"""Owners, companies and contacts: who is in the CRM, and the hidden traits that drive them.

Each company carries a hidden ``fit`` (industry and size against the ideal customer profile)
and each contact a hidden ``engagement``; later stages (activities, conversion, deals,
churn) are drawn from them, which is what makes the generated history learnable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from revorch.simulator import vocabulary as v
from revorch.simulator.config import DAY, SimulationConfig
from revorch.simulator.draws import pick, weighted
from revorch.simulator.events import EventSet, event_set

ROLE_SDR, ROLE_AE, ROLE_CSM, ROLE_MANAGER = range(4)


@dataclass(frozen=True)
class Owners:
    role: np.ndarray

    def of_role(self, role: int) -> np.ndarray:
        return np.flatnonzero(self.role == role)


@dataclass(frozen=True)
class Companies:
    industry: np.ndarray
    employees: np.ndarray
    tier: np.ndarray
    fit: np.ndarray  # hidden
    owner: np.ndarray  # account executive
    created: np.ndarray  # epoch seconds
    country: np.ndarray
    names: pl.DataFrame  # name, domain

    def __len__(self) -> int:
        return len(self.tier)


@dataclass(frozen=True)
class Contacts:
    company: np.ndarray
    created: np.ndarray
    owner: np.ndarray  # sales development rep
    source: np.ndarray
    seniority: np.ndarray
    engagement: np.ndarray  # hidden

    def __len__(self) -> int:
        return len(self.company)


@dataclass(frozen=True)
class Population:
    owners: Owners
    companies: Companies
    contacts: Contacts
    events: list[EventSet]


def build_population(config: SimulationConfig) -> Population:
    """Draw owners, companies and contacts, with their creation events."""
    rng = config.rng(1)
    t0, t1 = config.window
    owners, owner_events = _owners(config, rng)
    n_companies = max(1, config.contacts // 4)

    # Contacts first: a company's record is created just before its first contact.
    industry = weighted(rng, v.INDUSTRY_WEIGHTS, n_companies)
    employees = np.clip(np.rint(rng.lognormal(np.log(120), 1.5, n_companies)), 2, 250_000)
    employees = employees.astype(np.int64)
    tier = np.searchsorted(np.asarray(v.TIER_MIN_EMPLOYEES), employees, side="right") - 1
    fit = (
        np.asarray(list(v.INDUSTRY_FIT.values()))[industry]
        + np.asarray(v.TIER_FIT)[tier]
        + rng.normal(0.0, 0.5, n_companies)
    )
    aes = owners.of_role(ROLE_AE)
    company_owner = aes[rng.integers(0, len(aes), n_companies)]

    n = config.contacts
    size_weight = employees.astype(np.float64) ** 0.35
    company = rng.choice(n_companies, size=n, p=size_weight / size_weight.sum())
    # More leads later in the window: the business grows.
    created = t0 + np.rint((t1 - t0 - DAY) * rng.random(n) ** 0.85).astype(np.int64)
    source = weighted(rng, v.LEAD_SOURCE_WEIGHTS, n)
    title = weighted(rng, v.JOB_TITLE_WEIGHTS, n)
    seniority = np.asarray([s for _, s in v.JOB_TITLES])[title]
    engagement = (
        rng.normal(0.0, 1.0, n)
        + 0.45 * fit[company]
        + 0.4 * np.asarray(v.LEAD_SOURCE_EFFECT)[source]
    )
    sdrs = owners.of_role(ROLE_SDR)
    contact_owner = sdrs[rng.integers(0, len(sdrs), n)]

    company_created = np.full(n_companies, np.iinfo(np.int64).max)
    np.minimum.at(company_created, company, created)
    lonely = company_created == np.iinfo(np.int64).max
    company_created[lonely] = t0 + rng.integers(0, t1 - t0 - DAY, int(lonely.sum()))
    lead_time = rng.integers(60, 14 * DAY, n_companies)
    company_created = np.maximum(t0, company_created - lead_time)
    # The first contact must come after its company's record.
    created = np.maximum(created, company_created[company] + 60)

    names = _company_names(rng, n_companies)
    country = weighted(rng, v.COUNTRY_WEIGHTS, n_companies)
    companies = Companies(
        industry, employees, tier, fit, company_owner, company_created, country, names
    )
    contacts = Contacts(company, created, contact_owner, source, seniority, engagement)
    events = [
        *owner_events,
        *_company_events(config, rng, companies),
        contact_created_events(rng, contacts, companies, title),
    ]
    return Population(owners, companies, contacts, events)


def _owners(config: SimulationConfig, rng: np.random.Generator) -> tuple[Owners, list[EventSet]]:
    t0, t1 = config.window
    n = max(6, config.contacts // 2_000)
    counts = {
        ROLE_MANAGER: max(1, round(0.1 * n)),
        ROLE_CSM: max(1, round(0.2 * n)),
        ROLE_SDR: max(1, round(0.35 * n)),
    }
    counts[ROLE_AE] = n - sum(counts.values())
    role = rng.permutation(np.repeat(list(counts), list(counts.values())))
    first = pick(v.FIRST_NAMES, rng.integers(0, len(v.FIRST_NAMES), n))
    last = pick(v.LAST_NAMES, rng.integers(0, len(v.LAST_NAMES), n))
    email = _unique_emails(first, last, pl.Series([v.OWNER_DOMAIN] * n))
    region = pick(v.SALES_TEAMS, rng.integers(0, len(v.SALES_TEAMS), n))
    team = pl.Series(role, dtype=pl.Int64).replace_strict(
        {ROLE_SDR: "sales_development", ROLE_CSM: "customer_success", ROLE_MANAGER: "leadership"},
        default=None,
        return_dtype=pl.String,
    )
    team = team.fill_null(region)
    hired = t0 - rng.integers(30 * DAY, 4 * 365 * DAY, n)
    at = t0 + np.arange(n)
    created = event_set(
        "owner_created",
        "owner",
        np.arange(n),
        at,
        email=email,
        first_name=first,
        last_name=last,
        role=pick(v.OWNER_ROLES, role),
        team=team,
        is_active=np.ones(n, dtype=bool),
        created_at=hired,
    )
    leaving = np.flatnonzero(rng.random(n) < 0.06)
    left_at = t0 + rng.integers((t1 - t0) // 3, t1 - t0, len(leaving))
    left = event_set(
        "owner_left", "owner", leaving, left_at, is_active=np.zeros(len(leaving), dtype=bool)
    )
    return Owners(role), [created, left]


def _company_events(
    config: SimulationConfig, rng: np.random.Generator, companies: Companies
) -> list[EventSet]:
    _t0, t1 = config.window
    n = len(companies)
    names = companies.names
    revenue = np.rint(companies.employees * rng.lognormal(np.log(150_000), 0.5, n) / 1000) * 1000
    created = event_set(
        "company_created",
        "company",
        np.arange(n),
        companies.created,
        name=names["name"],
        domain=names["domain"],
        industry=pick(list(v.INDUSTRY_FIT), companies.industry),
        employees=companies.employees,
        annual_revenue=revenue.astype(np.float64),
        country=pick([c for c, _ in v.COUNTRIES], companies.country),
        tier=pick(v.TIERS, companies.tier),
        owner_id=companies.owner,
        created_at=companies.created,
    )
    # Some companies grow (or shrink) and get re-tiered later on.
    resized = np.flatnonzero(rng.random(n) < 0.08)
    resized = resized[companies.created[resized] < t1 - 60 * DAY]
    at = companies.created[resized] + rng.integers(30 * DAY, 400 * DAY, len(resized))
    keep = at < t1
    resized, at = resized[keep], at[keep]
    employees = np.maximum(
        2, np.rint(companies.employees[resized] * rng.lognormal(0.15, 0.25, len(resized)))
    ).astype(np.int64)
    tier = np.searchsorted(np.asarray(v.TIER_MIN_EMPLOYEES), employees, side="right") - 1
    resize = event_set(
        "company_resized",
        "company",
        resized,
        at,
        employees=employees,
        annual_revenue=np.rint(revenue[resized] * employees / companies.employees[resized] / 1000)
        * 1000.0,
        tier=pick(v.TIERS, tier),
    )
    return [created, resize]


def contact_created_events(
    rng: np.random.Generator, contacts: Contacts, companies: Companies, title: np.ndarray
) -> EventSet:
    """Creation events of ``contacts`` (names, email at the company's domain, phone, ...)."""
    n = len(contacts)
    first = pick(v.FIRST_NAMES, rng.integers(0, len(v.FIRST_NAMES), n))
    last = pick(v.LAST_NAMES, rng.integers(0, len(v.LAST_NAMES), n))
    domain = companies.names["domain"].gather(pl.Series(contacts.company, dtype=pl.Int64))
    prefix = pick([p for _, p in v.COUNTRIES], companies.country[contacts.company])
    digits = pl.DataFrame(
        {
            "p": prefix,
            "a": rng.integers(200, 1000, n),
            "b": rng.integers(100, 1000, n),
            "c": rng.integers(0, 10_000, n),
        }
    )
    phone = digits.select(
        pl.format("{} {} {} {}", "p", "a", "b", pl.col("c").cast(pl.String).str.zfill(4))
    ).to_series()
    return event_set(
        "contact_created",
        "contact",
        np.arange(n),
        contacts.created,
        company_id=contacts.company,
        owner_id=contacts.owner,
        email=_unique_emails(first, last, domain),
        first_name=first,
        last_name=last,
        job_title=pick([t for t, _ in v.JOB_TITLES], title),
        phone=phone,
        lead_source=pick(v.LEAD_SOURCES, contacts.source),
        lifecycle_stage=pl.repeat("lead", n, eager=True),
        lead_status=pl.repeat("new", n, eager=True),
        created_at=contacts.created,
    )


def _company_names(rng: np.random.Generator, n: int) -> pl.DataFrame:
    """Plausible company names with unique domains (a number is added once names repeat)."""
    n_words, n_suffixes = len(v.COMPANY_WORDS), len(v.COMPANY_SUFFIXES)
    distinct = n_words**2 * n_suffixes
    # Unique combinations spread over the whole space, repeats only once it is used up.
    combo = rng.permutation(distinct * (1 + n // distinct))[:n]
    frame = pl.DataFrame(
        {
            "w1": pick(v.COMPANY_WORDS, combo % n_words),
            "w2": pick(v.COMPANY_WORDS, (combo // n_words) % n_words),
            "s": pick(v.COMPANY_SUFFIXES, (combo // n_words**2) % n_suffixes),
            "k": combo // (n_words**2 * n_suffixes),
            "e": pick(v.DOMAIN_ENDINGS, combo % len(v.DOMAIN_ENDINGS)),
        }
    )
    return frame.select(
        name=pl.concat_str("w1", pl.lit(" "), "w2", pl.lit(" "), "s"),
        domain=pl.concat_str(
            (pl.col("w1") + pl.col("w2") + pl.col("s")).str.to_lowercase(),
            pl.when(pl.col("k") > 0).then(pl.col("k").cast(pl.String)).otherwise(pl.lit("")),
            "e",
        ),
    )


def _unique_emails(first: pl.Series, last: pl.Series, domain: pl.Series) -> pl.Series:
    """``first.last@domain``, with a number added when the address is already taken."""
    frame = pl.DataFrame({"f": first, "l": last, "d": domain}).with_columns(
        local=(pl.col("f") + "." + pl.col("l")).str.to_lowercase()
    )
    return frame.select(
        pl.concat_str(
            "local",
            pl.when(pl.int_range(pl.len()).over("local", "d") > 0)
            .then((pl.int_range(pl.len()).over("local", "d") + 1).cast(pl.String))
            .otherwise(pl.lit("")),
            pl.lit("@"),
            "d",
        )
    ).to_series()
