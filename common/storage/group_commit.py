"""Group commit: concurrent changes bound for one primary share a pipeline and one durability wait.

WAIT and WAITAOF answer for every write made before them on their connection, so the scripts of many
changes, sent back to back on one connection and followed by a single wait, are all confirmed by it, as
a database's group commit confirms many transactions with one log flush. A change with nothing in flight
on its primary goes at once (no added latency when idle); those that arrive while a pipeline is out go
together in the next one. Each caller still gets its own script's reply; the wait's reply is shared.

With no wait, the same gathering serves scripts that need no confirmation but come in crowds: the
aggregator's partitions all take on the same tick, and their takes share one pipeline per primary, so a
tick's fixed cost (a round trip, a task switch, a read of the socket) is paid per node, not per partition.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from redis.asyncio.cluster import ClusterNode

from common.storage.internals import send_on_one_connection

log = logging.getLogger(__name__)

# The most changes one pipeline carries: bounds a pipeline's size and how long its first caller waits.
MAX_GROUP = 128
Command = tuple[Any, ...]


Waiting = list[tuple[Command, asyncio.Future[tuple[Any, Any]]]]


@dataclass
class _Primary:
    sender: asyncio.Task[None] | None = None  # the task sending this primary's groups, while there are any
    waiting: Waiting = field(default_factory=list)


class GroupCommit:
    """The scripts waiting per primary, each group followed by `wait` (the durability level's command) if any;
    `sizes` observes each group's size."""

    def __init__(self, wait: Command | None, sizes: Histogram) -> None:
        self.wait = wait
        self._sizes = sizes
        self._primaries: dict[str, _Primary] = {}

    async def send(self, node: ClusterNode, command: Command) -> tuple[Any, Any]:
        """Send `command` and then the wait on one connection of `node`, with whatever else is waiting to go
        there; return the command's reply and the wait's (None without a wait). Raises what send_on_one_connection
        raises: NothingSent (no command reached the node) or a connection error after sending (unknown outcome).

        The pipeline goes out from a task of its own, never from a caller's: a caller that gives up (its
        deadline) can't strand the others. Starting that task costs one turn of the event loop, in which
        whatever else is ready to go to the node joins the first group.
        """
        primary = self._primaries.setdefault(node.name, _Primary())
        future: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()
        primary.waiting.append((command, future))
        if primary.sender is None:
            primary.sender = asyncio.create_task(self._send_while_waiting(node, primary), name=f"commit-{node.name}")
        return await future

    async def _send_while_waiting(self, node: ClusterNode, primary: _Primary) -> None:
        try:
            while primary.waiting:
                # A turn of the event loop first: the handlers that became ready while the last group was out
                # (their requests read, their scripts chosen) join this group instead of the next.
                await asyncio.sleep(0)
                group = [(command, future) for command, future in primary.waiting[:MAX_GROUP] if not future.done()]
                del primary.waiting[:MAX_GROUP]
                if group:
                    await self._send_group(node, group)
        finally:
            primary.sender = None

    async def _send_group(self, node: ClusterNode, group: Waiting) -> None:
        self._sizes.observe(len(group))
        commands = [command for command, _ in group]
        try:
            replies = await send_on_one_connection(node, commands + [self.wait] if self.wait else commands)
        except Exception as error:  # each caller learns what the pipeline met: not sent, or unknown
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), reply in zip(group, replies, strict=False):
            if not future.done():
                future.set_result((reply, replies[-1] if self.wait else None))
