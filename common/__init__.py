"""Shared core for the paper replications: data, models, meta step, training, runs, reports."""
