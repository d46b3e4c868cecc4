"""Benchmarks and soak tests; run them as modules (``python -m bench.soak``)."""
