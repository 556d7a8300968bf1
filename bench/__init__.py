"""Benchmarks for Warren. ``python -m bench.fanout`` measures the edge's fan-out."""
