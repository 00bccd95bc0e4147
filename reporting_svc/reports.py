"""The reporting domain: merges per-partition statistics into exact answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from common.rpc.validation import check_limit, check_user
from common.storage import keys
from common.storage.cluster import Cluster

SCRIPTS = Path(__file__).parent / "scripts"


class Reports:
    def __init__(self, cluster: Cluster, partitions: int) -> None:
        self.cluster = cluster
        self.partitions = range(partitions)
        self._top_readers = cluster.script(SCRIPTS / "top_readers.lua", repeatable=True)  # it only reads

    async def top_profiles(self, limit: int) -> list[tuple[str, int]]:
        """The top `limit` users by reads, highest first, ties by user name.

        Each user lives in exactly one partition, so merging each partition's top list is exact.
        """
        check_limit(limit)
        replies = await asyncio.gather(
            *(self.cluster.run(self._top_readers, [keys.reads_key(p)], [limit]) for p in self.partitions)
        )
        scores: dict[str, int] = {}
        for flat in replies:
            for i in range(0, len(flat), 2):
                scores[flat[i].decode()] = int(float(flat[i + 1]))
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]

    async def user_reads(self, user: str) -> int:
        check_user(user)
        partition = keys.partition_of(user, len(self.partitions))
        async with self.cluster.bounded() as client:
            score = await client.zscore(keys.reads_key(partition), user)
        return int(score or 0)

    async def partition_totals(self) -> list[dict[bytes, bytes]]:
        """Each partition's count per operation type, as stored."""

        async def totals(partition: int) -> dict[bytes, bytes]:
            async with self.cluster.bounded() as client:
                return cast(dict[bytes, bytes], await client.hgetall(keys.totals_key(partition)))  # bytes: no decoding

        return await asyncio.gather(*(totals(p) for p in self.partitions))

    async def operation_totals(self, partition_totals: list[dict[bytes, bytes]] | None = None) -> dict[str, int]:
        summed: dict[str, int] = {str(kind): 0 for kind in keys.EventType}
        for counts in partition_totals if partition_totals is not None else await self.partition_totals():
            for kind, count in counts.items():
                if kind.decode() in summed:
                    summed[kind.decode()] += int(count)
        return summed
