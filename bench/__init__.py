"""Benchmarks: tables of ratios against peers (``make bench``) and a soak (``python -m bench.soak``)."""
