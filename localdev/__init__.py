"""Local development: a real Valkey cluster and the whole system as child processes (make run, tests, bench)."""
