"""Benchmarks and traffic simulators (run through `leadstream bench ...`)."""
