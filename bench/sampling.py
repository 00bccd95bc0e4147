"""Peak resident memory of the system's processes, sampled while a load runs."""

from __future__ import annotations

import asyncio
import contextlib

import psutil

from localdev.system import System


class PeakRss:
    """Samples RSS of every service process every 50 ms until stopped."""

    def __init__(self, system: System) -> None:
        self.processes = {name: psutil.Process(p.pid) for name, p in system.processes.items()}
        self.peak_mb = dict.fromkeys(self.processes, 0.0)
        self._task: asyncio.Task | None = None

    async def _sample(self) -> None:
        while True:
            for name, process in self.processes.items():
                with contextlib.suppress(psutil.Error):  # a process that has just exited
                    self.peak_mb[name] = max(self.peak_mb[name], process.memory_info().rss / 2**20)
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
