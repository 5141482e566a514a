"""The embedded CRM simulator as a Dagster job, so the UI can generate data too."""

import dagster as dg

from resources import LandingZoneResource
from revorch.simulator import SimulationConfig, simulate_history


class SimulateCrmConfig(dg.Config):
    contacts: int = 5_000
    seed: int = 42
    malformed_share: float = 0.0
    duplicate_share: float = 0.0


@dg.op
def write_simulated_history(
    context: dg.OpExecutionContext, config: SimulateCrmConfig, landing_zone: LandingZoneResource
) -> None:
    """Write a seeded CRM history into the landing zone as change batches."""
    summary = simulate_history(
        landing_zone.zone(),
        SimulationConfig(
            contacts=config.contacts,
            seed=config.seed,
            malformed_share=config.malformed_share,
            duplicate_share=config.duplicate_share,
        ),
    )
    context.log.info(f"simulated: {summary}")
    context.add_output_metadata({"batches": summary.batches, "events": summary.events})


@dg.job(description="Write a simulated CRM history into the landing zone.")
def simulate_crm():
    write_simulated_history()
