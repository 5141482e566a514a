"""The first HubSpot poll of 10,200 contacts against the test portal (tests/fake_hubspot.py),
with Revorch's default rate limits and with them lifted: `python bench/hubspot_poll.py`."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_hubspot import FakeHubSpot, Portal
from revorch.landing import LandingZone
from revorch.sources.hubspot.api import HubSpotApi, Limits
from revorch.sources.hubspot.own_writes import OwnWrites
from revorch.sources.hubspot.poller import PollSettings, poll

portal = Portal("t")
for n in range(10_200):
    portal.add("contacts", str(n + 1), 1_750_000_000_000 + n * 10, email=f"c{n}@x")
tmp = Path(tempfile.mkdtemp())
for label, limits in (
    ("default limits (150/10 s, 4 searches/s)", Limits()),
    ("limits lifted", Limits(100000, 100000)),
):
    with FakeHubSpot(portal) as hs:
        t = time.perf_counter()
        r = poll(
            HubSpotApi("t", hs.url, limits),
            LandingZone(tmp / label[:7] / "l"),
            tmp / label[:7] / "c.json",
            OwnWrites(tmp / "o"),
            PollSettings(objects=("contacts",), owners=False),
        )
        print(label, f"{time.perf_counter() - t:.1f} s", r)
