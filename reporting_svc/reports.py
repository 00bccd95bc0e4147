"""The reporting domain: merges per-partition statistics into exact answers.

A top list reads the top list's index: at most keys.TOP_BUCKETS sorted sets, which the aggregator keeps up to
date from the partitions' counts, one copy behind them (docs/architecture.md, "The top list's index"), so its
cost does not grow with the partitions. The totals read every partition. Both are read per node: one function
call per primary reads every key it holds and answers for all of them (top_readers_on_node.lua,
totals_on_node.lua: the node's own top list, its sums), so what reporting_svc sends and parses grows with the
primaries, not the keys. A key whose node can't answer for it (its slot moved, or is migrating) is read on its
own (Cluster.run_many: one pipeline per primary). Top lists and the totals are
shared for PROFILEMESH_REPORTING_CACHE_MS: calls arriving while a fan-out is in flight await it (single
flight), and calls within the window after it started take its answer (a top list cut to their limit).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from common.rpc.status import MAX_CALL_S
from common.rpc.validation import check_limit, check_user
from common.storage import keys
from common.storage.cluster import Cluster, Confirm, Script

SCRIPTS = Path(__file__).parent / "scripts"

Ranking = list[tuple[str, int]]


T = TypeVar("T")


@dataclass
class _Fetch(Generic[T]):
    """One fan-out (for the top `limit`; 0 for the totals), shared by every call it can answer while fresh."""

    limit: int
    started: float  # time.monotonic() when it was sent: the answer is no older than this
    task: asyncio.Task[T]

    def answers(self, limit: int, now: float, window_s: float, since: float) -> bool:
        if limit > self.limit or self.started < since:
            return False
        if not self.task.done():
            return True  # in flight: join it
        return not self.task.cancelled() and self.task.exception() is None and now - self.started < window_s


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _joined(
    latest: _Fetch[T] | None, limit: int, since: float, window_s: float, fan_out: Callable[[], Coroutine[Any, Any, T]]
) -> _Fetch[T]:
    """`latest` if it answers the call, else a fan-out started now: a task of its own, so a caller that gives up
    (its deadline, a cancelled call) cancels only its wait."""
    if latest is not None and latest.answers(limit, time.monotonic(), window_s, since):
        return latest
    task = asyncio.create_task(fan_out())
    task.add_done_callback(_retrieved)  # its failure is each waiting caller's; none may be left waiting
    return _Fetch(limit, time.monotonic(), task)


@functools.cache
def _names(key: Callable[[int, int], str], count: int, generation: int) -> tuple[str, ...]:
    """Every partition's (or bucket's) key of one kind: made once, not per call."""
    return tuple(key(p, generation) for p in range(count))


class Reports:
    def __init__(self, cluster: Cluster, partitions: int, cache_ms: int = 0) -> None:
        self.cluster = cluster
        self.partitions = range(partitions)
        self.cache_s = cache_ms / 1000
        # They only read: safe to run again.
        self._top_on_node = cluster.script(SCRIPTS / "top_readers_on_node.lua", repeatable=True)
        self._totals_on_node = cluster.script(SCRIPTS / "totals_on_node.lua", repeatable=True)
        self._top_readers = cluster.script(SCRIPTS / "top_readers.lua", repeatable=True)
        self._partition_totals = cluster.script(SCRIPTS / "partition_totals.lua", repeatable=True)
        self._latest: _Fetch[Ranking] | None = None
        self._latest_totals: _Fetch[list[dict[bytes, Any]]] | None = None

    async def top_profiles(self, limit: int, since: float = 0.0) -> Ranking:
        """The top `limit` users by reads, highest first, ties by user name; read no earlier than `since`
        (time.monotonic()), when given, so that it reflects at least what the caller saw by then.

        Each user lives in exactly one partition, and so in one bucket of the index, so merging each bucket's
        top list is exact; and the order is total (score, then name), so the top `limit` of a longer list is its
        first `limit`.
        """
        check_limit(limit)
        if not self.cache_s:
            return await self._fan_out(limit)
        fetch = self._latest = _joined(self._latest, limit, since, self.cache_s, lambda: self._fan_out(limit))
        return (await asyncio.shield(fetch.task))[:limit]

    async def _fan_out(self, limit: int) -> Ranking:
        """Every node's top `limit` of the index's buckets (and each bucket's read on its own: with the users tied
        with its last), merged."""
        buckets = _names(keys.top_key, keys.top_buckets(len(self.partitions)), self.cluster.generation)
        replies = await self._on_every_node(self._top_on_node, self._top_readers, buckets, [limit])
        scores: dict[str, int] = {}
        for flat in replies:
            for i in range(0, len(flat), 2):
                scores[flat[i].decode()] = int(float(flat[i + 1]))
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]

    async def _on_every_node(
        self, on_node: Script, on_key: Script, names: Sequence[str], args: Sequence[Any]
    ) -> list[Any]:
        """`on_node`'s reply for the keys each primary holds, and `on_key`'s for each key no node answered for; any
        key's failure fails the whole (an answer missing a partition would be wrong, not partial)."""
        answered, left = await self.cluster.run_on_nodes(on_node, names, args, MAX_CALL_S)
        replies = [reply for _, reply in answered]
        if left:
            results = await self.cluster.run_many(
                on_key, [([names[i]], args) for i in left], MAX_CALL_S, Confirm.NOTHING
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            replies += results
        return replies

    async def user_reads(self, user: str) -> int:
        check_user(user)
        partition = keys.partition_of(user, len(self.partitions))
        async with self.cluster.bounded() as client:
            score = await client.zscore(keys.reads_key(partition, self.cluster.generation), user)
        return int(score or 0)

    async def stored_totals(self) -> list[dict[bytes, Any]]:
        """The counts per operation type as the cluster holds them, in parts whose sum is the totals: each node's
        sums, and the counts of each partition read on its own (bytes: no decoding). Every count only grows, so
        parts equal to an earlier reading's mean nothing was counted since."""
        names = _names(keys.totals_key, len(self.partitions), self.cluster.generation)
        replies = await self._on_every_node(self._totals_on_node, self._partition_totals, names, [])
        return [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in replies]

    async def _shared_totals(self) -> list[dict[bytes, Any]]:
        """stored_totals, shared as the top lists are: GetOperationTotals reads every partition too."""
        if not self.cache_s:
            return await self.stored_totals()
        fetch = self._latest_totals = _joined(self._latest_totals, 0, 0.0, self.cache_s, self.stored_totals)
        return await asyncio.shield(fetch.task)

    async def operation_totals(self, stored: list[dict[bytes, Any]] | None = None) -> dict[str, int]:
        summed: dict[str, int] = {str(kind): 0 for kind in keys.EventType}
        for counts in stored if stored is not None else await self._shared_totals():
            for kind, count in counts.items():
                if kind.decode() in summed:
                    summed[kind.decode()] += int(count)
        return summed
