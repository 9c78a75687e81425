"""Benchmarks of eggroll_opt: ``python -m benchmarks.core`` (strategy work per generation)."""
