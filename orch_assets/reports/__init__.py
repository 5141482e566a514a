"""Reports written for people: the weekly funnel report."""
