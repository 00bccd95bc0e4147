"""Figures over A/B rounds: each round runs every scenario once, both systems interleaved.

A ratio between two systems is taken within one round (round k's REST req/s over round k's
baseline req/s), so a slow stretch of the shared machine hits both sides of it; the report gives
the median of the rounds' ratios and their minimum. Everything here is pure: it only computes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.results import LoadResult

Key = tuple[str, str, int]  # (scenario, system, concurrency)
CLUSTER = "cluster (6 nodes)"
BASELINE = "baseline"  # the baseline's gunicorn master and workers


def split_by_system(usage: Mapping[str, float], baseline: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Per-request CPU of the system under load (its processes and the cluster they share), and of the
    other system's processes, idle meanwhile, which the loaded system's total must not count."""

    def own(name: str) -> bool:
        return name in (BASELINE, CLUSTER) if baseline else name != BASELINE

    return (
        {name: value for name, value in usage.items() if own(name)},
        {name: value for name, value in usage.items() if not own(name)},
    )


def generator_us(load: LoadResult) -> float:
    """Microseconds of the load generator's CPU per request it completed."""
    if not load.requests:
        return 0.0
    return load.generator_cpu * load.duration_s / load.requests * 1e6


@dataclass(frozen=True)
class Run:
    """One load run in one round: what the generator saw and the CPU each of the system's processes spent."""

    round: int
    load: LoadResult
    cpu_us: Mapping[str, float]  # µs of CPU per request by process of the system (cluster nodes included)
    idle_us: Mapping[str, float] = field(default_factory=dict)  # the other system's processes, not in the total

    @property
    def key(self) -> Key:
        return (self.load.scenario, self.load.system, self.load.concurrency)

    @property
    def system_us(self) -> float:
        """The system's CPU per request: every metered process, the load generator excluded."""
        return sum(self.cpu_us.values())

    @property
    def generator_us(self) -> float:
        return generator_us(self.load)

    @property
    def other_system_us(self) -> float:
        return sum(self.idle_us.values())


@dataclass(frozen=True)
class Spread:
    """The rounds' values of one figure: the median decides, the minimum and maximum show the spread."""

    values: tuple[float, ...]  # in round order

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


def by_key(runs: Sequence[Run]) -> dict[Key, list[Run]]:
    """Runs grouped by (scenario, system, concurrency), groups in first-run order, each in round order."""
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    return {key: sorted(group, key=lambda run: run.round) for key, group in groups.items()}


def round_ratios(
    runs: Sequence[Run], numerator: Key, denominator: Key, figure: Callable[[Run], float]
) -> Spread | None:
    """figure(numerator) / figure(denominator) within each round both ran in; None if no round has both."""
    groups = by_key(runs)
    below = {run.round: figure(run) for run in groups.get(denominator, [])}
    ratios = tuple(figure(run) / below[run.round] for run in groups.get(numerator, []) if below.get(run.round, 0.0) > 0)
    return Spread(ratios) if ratios else None


@dataclass(frozen=True)
class LoadSummary:
    """One (scenario, system, concurrency) over the rounds: the median of each figure, errors summed."""

    scenario: str
    system: str
    concurrency: int
    rps: Spread
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int  # over all rounds
    generator_cpu: float  # cores, median
    generator_cores: int
    saturated_rounds: int  # rounds whose generator had no headroom


def summarise(runs: Sequence[Run]) -> list[LoadSummary]:
    summaries = []
    for (scenario, system, concurrency), group in by_key(runs).items():
        loads = [run.load for run in group]
        summaries.append(
            LoadSummary(
                scenario=scenario,
                system=system,
                concurrency=concurrency,
                rps=Spread(tuple(load.rps for load in loads)),
                p50_ms=statistics.median(load.p50_ms for load in loads),
                p99_ms=statistics.median(load.p99_ms for load in loads),
                p999_ms=statistics.median(load.p999_ms for load in loads),
                errors=sum(load.errors for load in loads),
                generator_cpu=statistics.median(load.generator_cpu for load in loads),
                generator_cores=max(load.generator_cores for load in loads),
                saturated_rounds=sum(not load.generator_headroom for load in loads),
            )
        )
    return summaries


@dataclass(frozen=True)
class CpuSummary:
    """CPU µs per request of one (scenario, system, concurrency), medians over the rounds."""

    key: Key
    by_process: dict[str, float]  # each process's median
    system_total: float  # the median of the rounds' totals (not the sum of the medians), generator excluded
    generator: float  # the generator's median, shown apart
    other_system: float  # the idle other system's processes, median, shown apart


def cpu_summaries(runs: Sequence[Run]) -> list[CpuSummary]:
    summaries = []
    for key, group in by_key(runs).items():
        processes = sorted({name for run in group for name in run.cpu_us})
        summaries.append(
            CpuSummary(
                key=key,
                by_process={name: statistics.median(run.cpu_us.get(name, 0.0) for run in group) for name in processes},
                system_total=statistics.median(run.system_us for run in group),
                generator=statistics.median(run.generator_us for run in group),
                other_system=statistics.median(run.other_system_us for run in group),
            )
        )
    return summaries
