"""Whether a primary has a replica in sync, asked of the primary itself and trusted briefly.

Replica-durable changes and the read check ask it before each operation: a shard that lost its last
replica then refuses at once ("nothing happened") instead of letting WAIT time out ("outcome unknown").
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# How long a primary's replica count is trusted. A shard that lost its last replica fails fast
# after at most this long; one whose replica came back accepts changes again after at most this long.
REPLICA_CHECK_TTL_S = 0.05


class ReplicaCheck:
    """Each primary's INFO replication, asked at most once per TTL; concurrent callers share one question."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, bool]] = {}  # node name -> (checked at, has a replica)
        self._asking: dict[str, asyncio.Future[bool]] = {}

    async def has_replica(self, node: ClusterNode) -> bool:
        checked = self._known.get(node.name)
        if checked and time.monotonic() - checked[0] < REPLICA_CHECK_TTL_S:
            return checked[1]
        if node.name not in self._asking:
            self._asking[node.name] = asyncio.ensure_future(self._ask(node))
            self._asking[node.name].add_done_callback(lambda _: self._asking.pop(node.name, None))
        return await asyncio.shield(self._asking[node.name])

    async def _ask(self, node: ClusterNode) -> bool:
        try:
            info = await node.execute_command("INFO", "replication")
        except (RedisError, OSError) as error:  # unreachable or not ready: the operation itself will say so
            log.debug("INFO replication of %s failed: %r", node.name, error)
            return True
        if info.get("role") != "master":  # a stale topology: the operation gets MOVED and finds the primary
            return True
        online = any(
            isinstance(value, dict) and value.get("state") == "online"
            for name, value in info.items()
            if name.startswith("slave")
        )
        had = self._known.get(node.name, (0.0, True))[1]
        if had and not online:
            log.warning(
                "%s has no replica in sync: replica-durable changes on its partitions answer UNAVAILABLE", node.name
            )
        elif online and not had:
            log.info("%s has a replica again: replica-durable changes on its partitions are accepted", node.name)
        self._known[node.name] = (time.monotonic(), online)
        return online

    def forget(self, node: ClusterNode) -> None:
        """Ask again next time: a wait failed, perhaps because the replica just went away."""
        self._known.pop(node.name, None)
