"""A read-only copy of the state store for analysts, refreshed at the end of every run."""
