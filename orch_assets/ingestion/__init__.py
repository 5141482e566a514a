"""Landing zone -> change log -> current-state CRM tables."""
