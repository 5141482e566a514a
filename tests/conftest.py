from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from revorch import clock
from revorch.landing import LandingZone
from revorch.state.migrate import migrate


@pytest.fixture
def zone(tmp_path: Path) -> LandingZone:
    return LandingZone(tmp_path / "landing").ensure()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "revorch.duckdb"


@pytest.fixture
def conn(db_path: Path):
    """A migrated state store in a real DuckDB file, on the data clock: tests write histories
    with fixed dates, so "now" is their newest change, whatever day the suite runs."""
    connection = duckdb.connect(str(db_path))
    connection.execute("SET TimeZone = 'UTC'")
    migrate(connection)
    clock.bind(connection, clock.DATA)
    yield connection
    connection.close()


def event(event_id: str, object_type: str, object_id: str, occurred_at: str, **properties):
    return {
        "event_id": event_id,
        "object_type": object_type,
        "object_id": object_id,
        "occurred_at": occurred_at,
        "properties": properties,
    }
