"""Histories of concurrent profile operations under faults, recorded and checked for linearizability."""
