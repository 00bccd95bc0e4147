"""Aggregator: event streams -> statistics, every event counted exactly once."""
