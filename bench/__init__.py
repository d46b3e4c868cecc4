"""Benchmarks that print tables (``python -m bench.<name>``); not part of the test suite."""
