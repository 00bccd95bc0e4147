"""Benchmarks: figures measured on a real local system, never asserted in tests."""
