"""Everything the stage and handoff assets do, in graph order, in one call.

The assets run these steps one by one; tests and benchmarks call them all at once.
"""

from __future__ import annotations

import duckdb

from orch_assets.sql_files import run_sql_file
from orch_assets.stages.assets import SQL_DIR as STAGES
from orch_assets.stages.assets import sql_parameters
from revorch.lifecycle.config import LifecycleConfig
from revorch.lifecycle.runner import refresh_account_lifecycle, refresh_contact_lifecycle

HANDOFFS = STAGES.parent / "handoffs"

SQL_FILES = [
    STAGES / "waiting_references.sql",
    *(STAGES / f"{name}.sql" for name in ("leads", "mqls", "sqls", "opportunities", "customers")),
    STAGES / "onboarding.sql",
    STAGES / "onboarding_progress.sql",
    *(STAGES / f"{name}.sql" for name in ("adoption_health", "renewals", "expansion")),
    *(
        HANDOFFS / f"{name}.sql"
        for name in ("follow_up_cadence", "sla_escalations", "renewal_risk")
    ),
]


def refresh_all_stages(
    conn: duckdb.DuckDBPyConnection, config: LifecycleConfig, *, full_rebuild: bool = False
) -> None:
    refresh_contact_lifecycle(conn, config, full_rebuild=full_rebuild)
    refresh_account_lifecycle(conn, config, full_rebuild=full_rebuild)
    parameters = sql_parameters(config)
    for path in SQL_FILES:
        run_sql_file(conn, path, parameters)
