"""Benchmarks: load generation, statistics and results files."""
