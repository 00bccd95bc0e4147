"""CPU per request by component: on a shared 2-core machine, that says more than requests/s alone.

A snapshot reads the user+system CPU seconds of each group of processes (a service, the six
cluster nodes, the baseline's gunicorn master and workers); the difference of two snapshots over
the requests served in between is the CPU each component spent per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import psutil

Groups = Mapping[str, Callable[[], list[int]]]  # component -> its current PIDs


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):  # a process that has just exited
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


class CpuMeter:
    def __init__(self, groups: Groups) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, float]:
        return {name: cpu_seconds(pids()) for name, pids in self.groups.items()}

    @staticmethod
    def per_request_us(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
        """Microseconds of CPU per request for each component over the interval."""
        if not requests:
            return dict.fromkeys(before, 0.0)
        return {name: (after[name] - before[name]) / requests * 1e6 for name in before}
