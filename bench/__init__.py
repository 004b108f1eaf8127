"""Benchmarks behind `sentinel bench`; results go to docs/benchmarks.md (never timing tests)."""
