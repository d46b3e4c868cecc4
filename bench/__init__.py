"""Benchmarks that print tables of ratios against peers (run with ``make bench``)."""
