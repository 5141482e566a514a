"""HubSpot: an incremental poller over the CRM v3 search API (into the landing zone) and a
write-back target for the dispatcher (docs/sources/hubspot.md)."""
