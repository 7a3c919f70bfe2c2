"""Benchmarks (README.md): run from the repository root as python -m benchmarks.NAME."""
