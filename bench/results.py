"""What one load run measured, in one shape for every generator (wrk, the Python one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    scenario: str  # e.g. "a REST reads"
    system: str  # "profilemesh" or "baseline"
    concurrency: int
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    generator_cpu: float  # CPU the load generator used, in cores (1.0 = one core busy)
    generator_cores: int  # how many cores it could have used (its threads or processes)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def generator_headroom(self) -> bool:
        """The generator had CPU to spare: below 80% of what its threads or processes could use."""
        return self.generator_cpu < 0.8 * self.generator_cores


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
