"""Benchmarks run by `make bench`; each writes its table under benchmarks/results/."""
