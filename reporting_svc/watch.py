"""WatchTopProfiles: one poller per process while anyone watches, changes coalesced per interval.

Each interval the poller reads the operation totals (totals_on_node.lua, one call per primary) and the top list,
once, for the largest limit watched (a smaller limit's list is its prefix: the order is total), through the same
short-lived cache as GetTopProfiles (reports.py); each watcher is handed the snapshot when it differs from what it
was sent. The top list is read every round, not only when the totals change: it comes from the top list's index,
which follows the counts by a copy, so totals that stopped changing do not mean the top list did; it reads at
most 16 keys, the totals every partition's, each one call per primary. A watcher holds only the latest snapshot,
so a slow reader skips intermediate ones instead of queueing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from common.errors import StorageError
from common.rpc.streams import StreamClock
from common.rpc.validation import check_limit
from reporting_svc.reports import Reports

log = logging.getLogger(__name__)


Ranking = tuple[tuple[str, int], ...]
Snapshot = tuple[Ranking, tuple[tuple[str, int], ...]]  # the top list, and the totals as (type, count) pairs


class Watcher:
    def __init__(self, limit: int, clock: StreamClock) -> None:
        self.limit = limit
        self.clock = clock
        self.sent: Snapshot | None = None
        self.latest: Snapshot | None = None

    def offer(self, ranking: Ranking, totals: tuple[tuple[str, int], ...]) -> None:
        snapshot = (ranking[: self.limit], totals)
        if snapshot != self.sent:
            self.latest = snapshot
            self.clock.wake.set()


class Leaderboard:
    def __init__(self, reports: Reports, interval_ms: int) -> None:
        self.reports = reports
        self.interval_s = interval_ms / 1000
        self.watchers: set[Watcher] = set()
        self._poller: asyncio.Task[None] | None = None

    async def watch(self, limit: int, clock: StreamClock) -> AsyncGenerator[Snapshot]:
        """The snapshot now, then each different one the poller finds (at most one per interval)."""
        watcher = Watcher(check_limit(limit), clock)
        self.watchers.add(watcher)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="leaderboard-poller")
        try:
            ranking, totals = await self._snapshot(limit)
            watcher.sent = (ranking, totals)
            yield watcher.sent
            while True:
                if not await clock.wait():
                    clock.sent(event=False)  # no heartbeats on this stream: nothing is sent while nothing changes
                    continue
                if watcher.latest is not None and watcher.latest != watcher.sent:
                    watcher.sent = watcher.latest
                    yield watcher.sent
        finally:
            self.watchers.discard(watcher)
            if not self.watchers and self._poller is not None:
                self._poller.cancel()
                self._poller = None

    async def _snapshot(self, limit: int, stored: list[dict[bytes, Any]] | None = None, since: float = 0.0) -> Snapshot:
        ranking = tuple(await self.reports.top_profiles(limit, since))
        totals = await self.reports.operation_totals(stored)
        return ranking, tuple(totals.items())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.watchers:
                continue
            try:
                stored = await self.reports.stored_totals()
                # A top list read before these totals may miss what changed them: this round's is read after.
                limit = max(w.limit for w in self.watchers)
                ranking, totals = await self._snapshot(limit, stored, since=time.monotonic())
            except StorageError as error:
                log.warning("leaderboard: cluster unavailable: %r", error)
                continue
            for watcher in self.watchers:
                watcher.offer(ranking, totals)
