"""Benchmarks: `python -m bench.matching` (see docs/matching-at-scale.md). Not imported by the
product; each measured task runs in a child process of its own (bench/measure.py)."""
