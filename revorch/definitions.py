"""Every Dagster definition of Revorch, assembled in one place."""

from __future__ import annotations

import dagster as dg

from orch_assets.ingestion.assets import crm_change_log, crm_current_state
from orch_assets.sources.simulator import simulate_crm
from resources import default_resources
from sensors.landing_zone import landing_zone_sensor

revorch_main = dg.define_asset_job(
    "revorch_main",
    selection=dg.AssetSelection.all(),
    description="Ingest every waiting batch and bring every asset up to date.",
)

defs = dg.Definitions(
    assets=[crm_change_log, crm_current_state],
    jobs=[revorch_main, simulate_crm],
    sensors=[landing_zone_sensor],
    resources=default_resources(),
)
