"""Ingestion: landing-zone batches -> change log (exactly once, bad lines quarantined) ->
current-state CRM tables. Plain Python and DuckDB; the assets in orch_assets/ingestion/ run it."""
