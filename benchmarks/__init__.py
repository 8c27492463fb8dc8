"""Reproducible benchmarks that print ratios against a baseline (see README.rst)."""
