"""The reporting domain: merges per-partition statistics into exact answers.

A top list or the totals read every partition, so they are read per node: one pipeline per primary carrying
each of its partitions' function calls (Cluster.run_many), a cost that grows with the primaries, not the
partitions. Top lists are shared for PROFILEMESH_REPORTING_CACHE_MS: calls arriving while a fan-out is in
flight await it (single flight), and calls within the window after it started take its answer, cut to their
limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.rpc.status import MAX_CALL_S
from common.rpc.validation import check_limit, check_user
from common.storage import keys
from common.storage.cluster import Cluster, Confirm, Script

SCRIPTS = Path(__file__).parent / "scripts"

Ranking = list[tuple[str, int]]


@dataclass
class _Fetch:
    """One fan-out for the top `limit`, shared by every call it can answer while fresh."""

    limit: int
    started: float  # time.monotonic() when it was sent: the answer is no older than this
    task: asyncio.Task[Ranking]

    def answers(self, limit: int, now: float, window_s: float, since: float) -> bool:
        if limit > self.limit or self.started < since:
            return False
        if not self.task.done():
            return True  # in flight: join it
        return not self.task.cancelled() and self.task.exception() is None and now - self.started < window_s


def _retrieved(task: asyncio.Task[Ranking]) -> None:
    if not task.cancelled():
        task.exception()


class Reports:
    def __init__(self, cluster: Cluster, partitions: int, cache_ms: int = 0) -> None:
        self.cluster = cluster
        self.partitions = range(partitions)
        self.cache_s = cache_ms / 1000
        self._top_readers = cluster.script(SCRIPTS / "top_readers.lua", repeatable=True)  # it only reads
        self._partition_totals = cluster.script(SCRIPTS / "partition_totals.lua", repeatable=True)
        self._latest: _Fetch | None = None

    async def top_profiles(self, limit: int, since: float = 0.0) -> Ranking:
        """The top `limit` users by reads, highest first, ties by user name; read no earlier than `since`
        (time.monotonic()), when given, so that it reflects at least what the caller saw by then.

        Each user lives in exactly one partition, so merging each partition's top list is exact; and the
        order is total (score, then name), so the top `limit` of a longer list is its first `limit`.
        """
        check_limit(limit)
        if not self.cache_s:
            return await self._fan_out(limit)
        fetch = self._latest
        if fetch is None or not fetch.answers(limit, time.monotonic(), self.cache_s, since):
            # A task of its own: a caller that gives up (its deadline, a cancelled call) cancels only its wait.
            task = asyncio.create_task(self._fan_out(limit), name=f"top-profiles-{limit}")
            task.add_done_callback(_retrieved)  # its failure is each waiting caller's; none may be left waiting
            fetch = self._latest = _Fetch(limit, time.monotonic(), task)
        return (await asyncio.shield(fetch.task))[:limit]

    async def _fan_out(self, limit: int) -> Ranking:
        """Every partition's top `limit` (with the users tied with its last), merged: one pipeline per primary."""
        replies = await self._on_every_partition(self._top_readers, keys.reads_key, [limit])
        scores: dict[str, int] = {}
        for flat in replies:
            for i in range(0, len(flat), 2):
                scores[flat[i].decode()] = int(float(flat[i + 1]))
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]

    async def _on_every_partition(self, script: Script, key: Any, args: Sequence[Any]) -> list[Any]:
        """The script's reply for each partition's key, in partition order; any partition's failure fails the
        whole (an answer missing a partition would be wrong, not partial)."""
        generation = self.cluster.generation
        results = await self.cluster.run_many(
            script, [([key(p, generation)], args) for p in self.partitions], MAX_CALL_S, Confirm.NOTHING
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def user_reads(self, user: str) -> int:
        check_user(user)
        partition = keys.partition_of(user, len(self.partitions))
        async with self.cluster.bounded() as client:
            score = await client.zscore(keys.reads_key(partition, self.cluster.generation), user)
        return int(score or 0)

    async def partition_totals(self) -> list[dict[bytes, bytes]]:
        """Each partition's count per operation type, as stored (bytes: no decoding)."""
        replies = await self._on_every_partition(self._partition_totals, keys.totals_key, [])
        return [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in replies]

    async def operation_totals(self, partition_totals: list[dict[bytes, bytes]] | None = None) -> dict[str, int]:
        summed: dict[str, int] = {str(kind): 0 for kind in keys.EventType}
        for counts in partition_totals if partition_totals is not None else await self.partition_totals():
            for kind, count in counts.items():
                if kind.decode() in summed:
                    summed[kind.decode()] += int(count)
        return summed
