"""Prompt-injection attacks on the agents: the corpus, a compromised model that obeys it, and
the CRM changes that plant it (see obedient_model.py)."""
