"""Benchmarks: ``python benchmarks/enqueue.py`` (or ``make bench``)."""
