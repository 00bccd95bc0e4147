"""Wake-ups by sharded pub/sub: one subscription per primary to the channels it serves.

The aggregator waits for an idle partition's next event this way (common/storage/keys.py wake_key) rather
than with a blocking read per partition: a connection per primary, not per partition, and no read to
renew while nothing happens. A message published while no subscription stood is lost, so every channel of a
subscription counts as woken once the subscription is (re)made: its waiter looks for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import RedisError

from common.errors import StorageError
from common.storage.connection import Connection
from common.storage.internals import shard_messages

log = logging.getLogger(__name__)

# How often the subscriptions are checked against the slot map the client knows (a failover, a slot moved).
REPLAN_S = 5.0
RETRY_S = 0.5
# Silence after which a subscription's connection is pinged, and then found dead if still silent.
IDLE_S = 30.0

Plan = dict[str, tuple[ClusterNode, list[str]]]  # node name -> the node and the channels it serves


class Wakes:
    """Calls `woken(channel)` for each message on `channels`, and for each channel of a subscription just made."""

    def __init__(self, connection: Connection, channels: Sequence[str], woken: Callable[[str], None]) -> None:
        self.connection = connection
        self.channels = list(channels)
        self.woken = woken

    async def run(self) -> None:
        """Hold the subscriptions until cancelled: remade whenever one ends or the slot map changes."""
        while True:
            try:
                plan = await self._plan()
                listeners = [asyncio.create_task(self._listen(node, chans)) for node, chans in plan.values()]
                watcher = asyncio.create_task(self._until_changed(plan))
                try:
                    done, _ = await asyncio.wait([*listeners, watcher], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in [*listeners, watcher]:
                        task.cancel()
                    await asyncio.gather(*listeners, watcher, return_exceptions=True)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]  # checked just above
            except (StorageError, RedisError, OSError) as error:
                log.warning("wake-up subscriptions: %r; subscribing again", error)
                await asyncio.sleep(RETRY_S)
                with contextlib.suppress(StorageError):  # logged by the next plan's failure, if it fails
                    await self.connection.refresh_topology()

    async def _plan(self) -> Plan:
        """The channels by their primary; those of a shard that is down are left out (their waiters find out
        by their own reads, and the next plan that finds them served subscribes them)."""
        served, _ = await self.connection.by_primary(self.channels)
        return {node.name: (node, [self.channels[index] for index in indices]) for node, indices in served}

    async def _until_changed(self, plan: Plan) -> None:
        while True:
            await asyncio.sleep(REPLAN_S)
            now = await self._plan()
            if {name: chans for name, (_, chans) in now.items()} != {name: chans for name, (_, chans) in plan.items()}:
                log.info("wake-up subscriptions: the slot map changed; subscribing again")
                return

    async def _listen(self, node: ClusterNode, channels: list[str]) -> None:
        async for channel in shard_messages(node, channels, IDLE_S):
            if channel is None:  # subscribed: whatever was published before is not coming
                for subscribed in channels:
                    self.woken(subscribed)
            else:
                self.woken(channel)
