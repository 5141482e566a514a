"""Clients of real CRMs. Each reads changes into the landing zone and writes nowhere else;
a CRM's write-back target is used by the dispatcher only."""
