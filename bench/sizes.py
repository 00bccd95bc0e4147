"""How big each benchmark is: the full run for `make bench`, a tiny one for the test suite."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    concurrencies: tuple[int, ...] = (1, 16, 64)
    rounds: int = 3  # A/B rounds: every request scenario at every concurrency, once per round
    load_s: int = 5  # each wrk / Python load run (wrk takes whole seconds)
    warmup_s: float = 1.0  # before each system's first run and inside each Python generator
    read_users: int = 10_000  # preloaded profiles that the read and mix scenarios pick from
    backlog: int = 200_000  # events written while no aggregator runs
    drain_timeout_s: float = 120.0
    lag_probes: int = 1000
    lag_background_rate: float = 1000.0
    lag_max_s: float = 30.0  # probing stops after this long even if fewer probes were made
    growth_sizes: tuple[int, ...] = (10_000, 1_000_000)
    growth_read_concurrency: int = 16
    profile_s: int = 8  # py-spy recording during an extra c=64 REST read run; 0 skips profiling
    grpc_processes: int = 1  # Python generator processes for the gRPC and script scenarios


FULL = Scale()

SMOKE = Scale(
    rounds=1,
    load_s=1,
    warmup_s=0.2,
    read_users=1_000,
    backlog=2_000,
    drain_timeout_s=30.0,
    lag_probes=20,
    lag_background_rate=100.0,
    lag_max_s=5.0,
    growth_sizes=(200, 1_000),
    profile_s=1,
)
