"""Data quality: Great Expectations suites on DuckDB queries (``expectations``)."""
