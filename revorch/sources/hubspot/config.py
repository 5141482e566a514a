"""Where the HubSpot source keeps its files and how it connects, from the environment.

``HUBSPOT_ACCESS_TOKEN``                 the private app's access token (or an OAuth token)
``REVORCH_HUBSPOT_BASE_URL``             default https://api.hubapi.com
``REVORCH_HUBSPOT_STATE``                cursor, own-writes ledger, dry-run file
                                         (default ``$REVORCH_HOME/hubspot``)
``REVORCH_HUBSPOT_REQUESTS_PER_10S``     default 150 (HubSpot allows private apps 190)
``REVORCH_HUBSPOT_SEARCHES_PER_SECOND``  default 4
``REVORCH_HUBSPOT_EXTRA_PROPERTIES``     more HubSpot properties to land as they are, e.g.
                                         ``contacts=hs_lead_score,region;deals=forecast``
``REVORCH_HUBSPOT_OBJECTS``              the object types to poll, default
                                         ``contacts,companies,deals,tickets``
``REVORCH_HUBSPOT_ATTRIBUTION``          ``false`` skips the property-history reads (who
                                         made each change; half a poll's requests), default
                                         ``true``
"""

from __future__ import annotations

import os
from pathlib import Path

from revorch import settings
from revorch.sources.hubspot.api import DEFAULT_BASE_URL, HubSpotApi, Limits
from revorch.sources.hubspot.mapping import OBJECTS
from revorch.sources.hubspot.poller import PollSettings

TOKEN_VARIABLE = "HUBSPOT_ACCESS_TOKEN"


def state_dir() -> Path:
    default = settings.revorch_home() / "hubspot"
    return Path(os.environ.get("REVORCH_HUBSPOT_STATE", default)).resolve()


def cursor_path() -> Path:
    return state_dir() / "cursor.json"


def own_writes_path() -> Path:
    return state_dir() / "own-writes.sqlite3"


def base_url() -> str:
    return os.environ.get("REVORCH_HUBSPOT_BASE_URL") or DEFAULT_BASE_URL


def limits() -> Limits:
    return Limits(
        requests_per_10s=int(os.environ.get("REVORCH_HUBSPOT_REQUESTS_PER_10S", 150)),
        searches_per_second=int(os.environ.get("REVORCH_HUBSPOT_SEARCHES_PER_SECOND", 4)),
    )


def extra_properties() -> dict[str, tuple[str, ...]]:
    """``contacts=a,b;deals=c`` -> {"contacts": ("a", "b"), "deals": ("c",)}."""
    extra: dict[str, tuple[str, ...]] = {}
    for part in os.environ.get("REVORCH_HUBSPOT_EXTRA_PROPERTIES", "").split(";"):
        if not part.strip():
            continue
        object_type, _, names = part.partition("=")
        if object_type.strip() not in OBJECTS or not names.strip():
            raise ValueError(
                f"REVORCH_HUBSPOT_EXTRA_PROPERTIES: {part!r} must read OBJECT=prop,prop with "
                f"OBJECT one of {', '.join(OBJECTS)}"
            )
        extra[object_type.strip()] = tuple(n.strip() for n in names.split(",") if n.strip())
    return extra


def objects() -> tuple[str, ...]:
    """``contacts,deals`` -> ("contacts", "deals"); PollSettings' default when unset."""
    names = os.environ.get("REVORCH_HUBSPOT_OBJECTS", "")
    chosen = tuple(n.strip() for n in names.split(",") if n.strip())
    unknown = [n for n in chosen if n not in OBJECTS]
    if unknown:
        raise ValueError(
            f"REVORCH_HUBSPOT_OBJECTS: {', '.join(unknown)} not one of {', '.join(OBJECTS)}"
        )
    return chosen or PollSettings.objects


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def attribution() -> bool:
    """Whether polls read property history, to credit each change to who made it."""
    value = os.environ.get("REVORCH_HUBSPOT_ATTRIBUTION", "").strip().lower()
    if value and value not in _TRUE + _FALSE:
        raise ValueError(f"REVORCH_HUBSPOT_ATTRIBUTION must be true or false, not {value!r}")
    return value not in _FALSE


def poll_settings() -> PollSettings:
    return PollSettings(
        objects=objects(), extra_properties=extra_properties(), attribution=attribution()
    )


def api_from_env() -> HubSpotApi:
    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        raise ValueError(
            f"{TOKEN_VARIABLE} is not set; create a private app in HubSpot and export its "
            "access token (docs/sources/hubspot.md)"
        )
    return HubSpotApi(token, base_url(), limits())
