"""The automation estate: the automations a customer already runs, imported from their
platforms' exports (``inventory``), and the audit's settings and report (``report``).
docs/estate.md describes the formats and the ranking."""
