"""The HubSpot SDK (hubspot-api-client), configured once: token, base URL, HubSpot's rate
limits kept on this side, and 429 answers retried after their ``Retry-After``.

Two limits are kept before they are hit (pyrate-limiter): every request counts against the
private app's burst limit (190 per 10 s), and search requests also against the search
limit (about 4 per second per account). Rates are configurable, so a poller and a dispatcher
running at the same time can share the portal's budget. A 429 that still comes (another app
of the portal spent the budget) is retried by urllib3 after the ``Retry-After`` it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from hubspot import HubSpot
from hubspot.crm.associations.v4 import BatchInputPublicFetchAssociationsBatchRequest
from hubspot.crm.objects import (
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate
from urllib3.util.retry import Retry

T = TypeVar("T")
DEFAULT_BASE_URL = "https://api.hubapi.com"
SEARCH_RESULT_CAP = 10_000  # one search query returns at most this many results
HISTORY_BATCH = 50  # records per batch read that asks for property history


@dataclass(frozen=True)
class Limits:
    """Requests per 10 seconds (all endpoints) and search requests per second."""

    requests_per_10s: int = 150
    searches_per_second: int = 4
    max_retries: int = 5  # 429s and connection errors, each after its Retry-After


class HubSpotApi:
    """The few HubSpot calls Revorch makes, each rate-limited; results as plain dicts."""

    def __init__(
        self,
        access_token: str,
        base_url: str = DEFAULT_BASE_URL,
        limits: Limits | None = None,
        timeout_seconds: float = 30.0,
        *,
        retry_reads: bool = True,
    ) -> None:
        """``retry_reads=False`` for writers: a request whose answer was lost may have been
        acted on, so it is not sent again here (the write-back checks before it writes)."""
        limits = limits or Limits()
        retry = Retry(
            total=limits.max_retries,
            read=None if retry_reads else 0,
            status_forcelist=(429,),
            allowed_methods=None,  # a 429 was not acted on, so even a POST may be sent again
            respect_retry_after_header=True,
            backoff_factor=1.0,
            raise_on_status=False,  # the last 429 reaches the SDK, which raises ApiException
        )
        self.client = HubSpot(access_token=access_token, retry=retry, host=base_url.rstrip("/"))
        self.timeout = timeout_seconds
        self._requests = Limiter(
            InMemoryBucket([Rate(limits.requests_per_10s, Duration.SECOND * 10)])
        )
        self._searches = Limiter(
            InMemoryBucket([Rate(limits.searches_per_second, Duration.SECOND)])
        )

    def _call(self, call: Callable[..., T], *args, search: bool = False, **kwargs) -> T:
        if search:
            self._searches.try_acquire("search")
        self._requests.try_acquire("request")
        return call(*args, _request_timeout=self.timeout, **kwargs)

    def search(
        self,
        object_type: str,
        *,
        properties: list[str],
        filters: list[dict],
        sort_property: str,
        limit: int = 100,
        after: str | None = None,
    ) -> dict:
        """One page of ``POST /crm/v3/objects/{object_type}/search``, ascending."""
        request = PublicObjectSearchRequest(
            filter_groups=[FilterGroup(filters=[Filter(**f) for f in filters])],
            sorts=[{"propertyName": sort_property, "direction": "ASCENDING"}],
            properties=properties,
            limit=limit,
            after=after,
        )
        page = self._call(
            self.client.crm.objects.search_api.do_search, object_type, request, search=True
        )
        return page.to_dict()

    def archived(
        self, object_type: str, *, properties: list[str], limit: int = 100, after: str | None
    ) -> dict:
        """One page of ``GET /crm/v3/objects/{object_type}?archived=true``."""
        page = self._call(
            self.client.crm.objects.basic_api.get_page,
            object_type,
            limit=limit,
            after=after,
            properties=properties,
            archived=True,
        )
        return page.to_dict()

    def associations(self, from_type: str, to_type: str, ids: list[str]) -> dict[str, list]:
        """``POST /crm/v4/associations/{from}/{to}/batch/read``: associated ids per id."""
        if not ids:
            return {}
        body = BatchInputPublicFetchAssociationsBatchRequest(inputs=[{"id": i} for i in ids])
        response = self._call(
            self.client.crm.associations.v4.batch_api.get_page, from_type, to_type, body
        ).to_dict()
        return {str(r["_from"]["id"]): r["to"] for r in response["results"]}

    def history(self, object_type: str, ids: list[str], properties: list[str]) -> dict[str, dict]:
        """``POST /crm/v3/objects/{object_type}/batch/read`` with ``propertiesWithHistory``:
        per id, each property's versions (``value``, ``timestamp``, ``source_type``,
        ``source_id``), HubSpot's record of who changed what. 50 records a request, as HubSpot
        allows with history."""
        found: dict[str, dict] = {}
        for start in range(0, len(ids), HISTORY_BATCH):
            body = BatchReadInputSimplePublicObjectId(
                inputs=[{"id": i} for i in ids[start : start + HISTORY_BATCH]],
                properties=[],
                properties_with_history=properties,
            )
            response = self._call(self.client.crm.objects.batch_api.read, object_type, body)
            for record in response.results:
                # to_dict() leaves the versions as SDK objects inside this dict of lists.
                found[str(record.id)] = {
                    name: [version.to_dict() for version in versions or ()]
                    for name, versions in (record.properties_with_history or {}).items()
                }
        return found

    def owners(self, *, limit: int = 100, after: str | None = None, archived: bool) -> dict:
        page = self._call(
            self.client.crm.owners.owners_api.get_page, limit=limit, after=after, archived=archived
        )
        return page.to_dict()

    def get(self, object_type: str, object_id: str, properties: list[str]) -> dict:
        record = self._call(
            self.client.crm.objects.basic_api.get_by_id,
            object_type,
            object_id,
            properties=properties,
        )
        return record.to_dict()

    def update(self, object_type: str, object_id: str, properties: dict[str, object]) -> dict:
        record = self._call(
            self.client.crm.objects.basic_api.update,
            object_type,
            object_id,
            SimplePublicObjectInput(properties=properties),
        )
        return record.to_dict()

    def create(self, object_type: str, properties: dict, associations: list[dict]) -> dict:
        body = SimplePublicObjectInputForCreate(properties=properties, associations=associations)
        return self._call(self.client.crm.objects.basic_api.create, object_type, body).to_dict()
