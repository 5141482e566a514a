"""The whole simulated CRM: every event set of the history, and where things stand at its end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from revorch.simulator.activities import activity_events, marketing_activities
from revorch.simulator.config import SimulationConfig
from revorch.simulator.customers import Customers, build_customers
from revorch.simulator.events import EventSet
from revorch.simulator.pipeline import Funnel, build_funnel
from revorch.simulator.population import Population, build_population


@dataclass(frozen=True)
class OpenDeals:
    """Deals still open when the history ends (the live stream moves them on)."""

    deal: np.ndarray
    stage: np.ndarray  # index into OPEN_STAGES of the stage reached
    won: np.ndarray  # hidden outcome
    contact: np.ndarray


@dataclass(frozen=True)
class World:
    config: SimulationConfig
    population: Population
    funnel: Funnel
    customers: Customers
    event_sets: list[EventSet]

    def open_deals(self) -> OpenDeals:
        _, t1 = self.config.window
        parts = [(self.funnel.deals, 0)] + [(d, 1) for d in self.customers.deals]
        deal, stage, won, contact = [], [], [], []
        for deals, first_stage in parts:
            still = np.flatnonzero((deals.created < t1) & (deals.closed >= t1))
            reached = (deals.stage_at[still] < t1).sum(axis=1) - 1
            reached = np.minimum(reached, deals.reached[still] - 1)
            deal.append(deals.first + still)
            stage.append(first_stage + reached)
            won.append(deals.won[still])
            contact.append(deals.contact[still])
        return OpenDeals(*(np.concatenate(x) for x in (deal, stage, won, contact)))


def build_world(config: SimulationConfig) -> World:
    """Generate every event of the history window (not yet ordered into batches)."""
    population = build_population(config)
    marketing, intent = marketing_activities(config, population)
    funnel = build_funnel(config, population, intent)
    customers = build_customers(config, population, funnel.deals)
    activity_parts = [marketing, funnel.activities]
    activities = activity_events(config.rng(5), activity_parts)
    event_sets = [
        *population.events,
        *funnel.events,
        *customers.events,
        *activities,
    ]
    return World(
        config=config,
        population=population,
        funnel=funnel,
        customers=customers,
        event_sets=[s for s in event_sets if s.frame.height],
    )
