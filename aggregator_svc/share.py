"""Which partitions this aggregator replica consumes: its share among the live replicas.

Each replica says it is live every quarter of the claim interval (scripts/heartbeat.lua: a sorted set in the
cluster, by server time) and takes the partitions that rendezvous hashing gives it among the live ones. Its
word holds for three heartbeats, so a replica that dies has its share taken over within the claim interval.
Sharing is for cost, not correctness: until it has heard from the cluster a replica consumes every partition,
and when two consume one (a handover) the consumer group still hands each entry to one of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from common.errors import StorageError
from common.runtime import metrics
from common.storage import keys
from common.storage.cluster import Cluster
from common.storage.replies import text

log = logging.getLogger(__name__)

HEARTBEAT_SCRIPT = Path(__file__).parent / "scripts" / "heartbeat.lua"


def owner(partition: int, replicas: list[str]) -> str:
    """The live replica that consumes the partition: rendezvous hashing, so a replica's partitions stay its own
    while others come and go, and those of one that goes are spread over the rest."""
    return max(replicas, key=lambda replica: hashlib.blake2b(f"{replica}/{partition}".encode(), digest_size=8).digest())


class Share:
    """The partitions `consumer` consumes; `gained(partition)` for each one it takes over."""

    def __init__(
        self, cluster: Cluster, consumer: str, partitions: range, claim_idle_ms: int, gained: Callable[[int], None]
    ) -> None:
        self.cluster = cluster
        self.consumer = consumer
        self.partitions = partitions
        self.heartbeat_s = claim_idle_ms / 4000
        self.gained = gained
        self.owned: set[int] = set(partitions)
        self._replicas: list[str] = []  # the live replicas the share was made for
        self._heartbeat = cluster.script(HEARTBEAT_SCRIPT, repeatable=True)

    async def run(self) -> None:
        """Say this replica is live and learn the others, every heartbeat; a cluster that can't be asked leaves
        the share as it was."""
        while True:
            try:
                # Outside the concurrency bound: behind a start's thousands of partition calls, a heartbeat
                # came late enough for the other replicas to take this one for dead.
                replicas = await self.cluster.run(
                    self._heartbeat,
                    [keys.AGGREGATORS_KEY],
                    [self.consumer, round(self.heartbeat_s * 3000)],
                    bounded=False,
                )
                self.update([text(replica) for replica in replicas])
            except StorageError as error:
                log.warning("share: cluster unavailable: %r; consuming the same %d partitions", error, len(self.owned))
            await asyncio.sleep(self.heartbeat_s)

    def update(self, replicas: list[str]) -> None:
        if replicas == self._replicas:
            return
        self._replicas = replicas
        owned = {p for p in self.partitions if owner(p, replicas) == self.consumer}
        if owned != self.owned:
            log.info("consuming %d of %d partitions, %d replicas live", len(owned), len(self.partitions), len(replicas))
        gained = owned - self.owned
        self.owned = owned
        metrics.PARTITIONS_OWNED.set(len(owned))
        for partition in gained:  # taken over: look at it now
            self.gained(partition)
