"""Randomized holdouts and their read-out: the assignment hash and the uplift estimator."""
