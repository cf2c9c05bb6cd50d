"""Experiments that run end to end on the built-in synthetic data (see bootstrap.py and
docs/bootstrap.md)."""
