"""Sources write CRM changes into the landing zone, and nowhere else."""
