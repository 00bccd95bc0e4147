"""The one door to the cluster: what the services ask of it, with every failure storage-neutral.

Scripts run through one runner (common/storage/runner.py), as the functions an admin step loaded (FCALL, see
common/storage/functions.py); plain commands run on the bounded client (`bounded`). Loops that wait for new
stream entries do so by sharded pub/sub (`watch_wakes`), a connection per primary, not a blocking read
per partition. Nothing outside common/storage imports redis-py, and what fails here is raised as one
of common/errors.py's StorageErrors (or a ServiceError that says what the caller must know).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from common.errors import ClusterUnavailable, FunctionsMissing, GroupExists, PartitionMismatch, StorageError
from common.runtime.config import Settings
from common.storage import functions, keys
from common.storage.connection import Connection, Script, connection_options
from common.storage.durability import Confirm, Waits
from common.storage.errors import translated
from common.storage.replies import text
from common.storage.runner import ScriptRunner
from common.storage.wakes import Wakes

__all__ = ["CLUSTER_FAILURES", "Cluster", "ClusterClient", "Confirm", "Entries", "Script", "connection_options"]

log = logging.getLogger(__name__)

# What a service's loop waits out when the cluster fails under it (each failure is one of these).
CLUSTER_FAILURES: tuple[type[Exception], ...] = (StorageError,)
# The client `bounded` yields, for type hints outside the storage layer.
ClusterClient = RedisCluster
Entries = list[tuple[Any, Any]]  # a stream's entries as the client returns them: (id, fields)


class Cluster:
    """The cluster as the services use it: one per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Room beyond the bound for the loops that run outside it, at most one call per partition each (the
        # aggregator's takes, the change feed's tail reads): they share a pipeline per primary, but one that is
        # redirected (ASK) takes a connection of its own.
        self.connection = Connection(settings, reserved=settings.partitions)
        self.runner = ScriptRunner(
            self.connection, Waits(settings.durability, settings.read_check, settings.durability_timeout_ms)
        )
        # The libraries this process calls functions of, each by its check function (verify_functions).
        self.libraries: dict[str, functions.Function] = {}
        self._generation: int | None = None  # verify_partitions
        self._layout_checked = asyncio.Event()

    def script(self, path: Path, repeatable: bool = False) -> Script:
        """The function made from a .lua file (common/storage/functions.py), by this version's name; see Script
        for `repeatable`. Its library must be loaded (verify_functions)."""
        function = functions.function(path)
        library = functions.library_of(path)
        self.libraries[library.name] = library.check
        return Script(path.stem, function.name, function.read_only, repeatable)

    async def run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        confirm: Confirm = Confirm.NOTHING,
        bounded: bool = True,
        together: bool = False,
    ) -> Any:
        """Run `script` on its slot's primary, then what `confirm` asks for (see common/storage/runner.py)."""
        return await self.runner.run(script, keys, args, confirm, bounded, together)

    async def run_many(
        self,
        script: Script,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        retry_budget_s: float,
        confirm: Confirm = Confirm.READ,
    ) -> list[Any]:
        """Run `script` once per call, one pipeline per primary, each confirmed as `confirm` asks (a read, or
        NOTHING): a reply or an error per call, in order."""
        return await self.runner.run_many(script, calls, retry_budget_s, confirm)

    async def run_on_nodes(
        self, script: Script, names: Sequence[str], args: Sequence[Any], retry_budget_s: float
    ) -> tuple[list[tuple[list[int], Any]], list[int]]:
        """Run `script` (flagged allow-cross-slot-keys) once per primary, for the keys among `names` it serves,
        passed after `args` (the first of them also routes the call): each call's indices into `names` and its
        reply; and the indices of the names no call answered for (a node failed, or its slot moved or is
        migrating: the script fails on a key its node does not hold), to be run one by one."""
        by_node, unserved = await self.connection.by_primary(names)
        calls = [([names[members[0]]], [*args, *(names[i] for i in members)]) for _, members in by_node]
        replies = await self.runner.run_many(script, calls, retry_budget_s, Confirm.NOTHING)
        answered = []
        for (_, members), reply in zip(by_node, replies, strict=True):
            if isinstance(reply, BaseException):
                log.debug("%s on a node failed, read one by one: %r", script.name, reply)
                unserved += members
            else:
                answered.append((members, reply))
        return answered, sorted(unserved)

    @asynccontextmanager
    async def bounded(self, kind: str = "command", name: str = "other") -> AsyncIterator[RedisCluster]:
        """The client for plain commands, within the concurrency bound; failures storage-neutral."""
        async with self.connection.bounded(kind, name) as client:
            yield client

    async def create_group(self, stream: str, group: str) -> bool:
        """Create the consumer group from the stream's first entry (and the stream if need be); False when it
        was there already."""
        try:
            async with self.bounded() as client:
                await client.xgroup_create(stream, group, id="0", mkstream=True)
        except GroupExists:
            return False
        return True

    async def read_own_pending(self, stream: str, group: str, consumer: str, count: int) -> Entries:
        """The entries delivered to `consumer` and not yet acknowledged (XREADGROUP from 0), in one attempt:
        the aggregator reads them at its start and after every failure, of every partition of a shard that is
        down too; the reads of one instant share a pipeline per primary."""
        command = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, "0")
        reply: Any = await self.connection.on_primary(stream, command, "xreadgroup", together=True)
        # RESP3, our connections' protocol: a map of the stream to its entries (nothing: none).
        return [(entry[0], entry[1]) for entries in (reply or {}).values() for entry in entries]

    async def claim_idle(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, start: Any, count: int
    ) -> tuple[Any, Entries]:
        """XAUTOCLAIM in one attempt (as read_own_pending): the entries from `start` pending longer than
        `min_idle_ms`, now `consumer`'s, and where the next call starts ("0-0": the end)."""
        command = ("XAUTOCLAIM", stream, group, consumer, min_idle_ms, start, "COUNT", count)
        reply: Any = await self.connection.on_primary(stream, command, "xautoclaim")
        return reply[0], [(entry[0], entry[1]) for entry in reply[1]]

    async def watch_wakes(self, partitions: Iterable[int], woken: Callable[[int], None]) -> None:
        """Call `woken(partition)` for each wake-up of the partitions' wake flags (keys.wake_key), and for every
        partition whenever its subscription is (re)made; runs until cancelled."""
        of_channel = {keys.wake_key(partition, self.generation): partition for partition in partitions}
        await self.watch_channels(list(of_channel), lambda channel: woken(of_channel[channel]))

    async def watch_channels(self, channels: Sequence[str], woken: Callable[[str], None]) -> None:
        """Call `woken(channel)` for each message on the sharded `channels`, and for every channel whenever its
        subscription is (re)made; runs until cancelled (common/storage/wakes.py)."""
        await Wakes(self.connection, channels, woken).run()

    async def ping(self) -> bool:
        """Whether any primary answers; used for gRPC health.

        One shard down must not take the whole service out of its load balancer: the partitions
        on the other shards still work (their callers get UNAVAILABLE only for the missing ones).
        """
        try:
            async with self.bounded() as client:
                for node in client.get_primaries():
                    try:
                        with translated():
                            if await client.ping(target_nodes=node):
                                return True
                    except StorageError as error:  # this node is unreachable, whatever the kind of failure
                        log.debug("ping of %s failed: %r", node.name, error)
        except StorageError as error:  # the client can't even learn the cluster's layout
            log.debug("cluster ping failed: %r", error)
        return False

    async def check_credentials(self) -> None:
        """Fail at once (CredentialsRefused) if the cluster refuses our user; an unreachable cluster is left to
        health checks."""
        await self.connection.check_credentials()

    async def verify_partitions(self) -> None:
        """Record the partition layout on first start; refuse to run with another partition count, or while a
        resize runs. Learns the layout's generation, which every key name needs (`generation`)."""
        wanted = self.settings.partitions
        async with self.bounded() as client:
            record = await client.get(keys.PARTITIONS_KEY)
            if record is None:  # only profile_svc's user may record it (common/storage/acl.py)
                # SETNX, not SET NX: the user is allowed SETNX alone, so no one holding its password can change it.
                await client.setnx(keys.PARTITIONS_KEY, keys.layout_record(keys.Layout(wanted)))
                record = await client.get(keys.PARTITIONS_KEY)
        try:
            layout = keys.parse_layout(text(record or ""))
        except ValueError:
            raise PartitionMismatch(
                f"the cluster's partition layout record {keys.PARTITIONS_KEY} is unreadable"
            ) from None
        if layout.resizing_to is not None:
            raise PartitionMismatch(
                f"the cluster's partitions are being resized from {layout.partitions} to "
                f"{layout.resizing_to.partitions}; start the services once `profilemesh cluster resize` has finished"
            )
        if layout.partitions != wanted:
            raise PartitionMismatch(
                f"the cluster was set up with {layout.partitions} partitions but PROFILEMESH_PARTITIONS is {wanted}; "
                "the partition count changes only by `profilemesh cluster resize` (docs/deploying.md)"
            )
        self._generation = layout.generation
        self._layout_checked.set()

    async def layout_checked(self) -> None:
        """Wait until verify_partitions has read the layout: for loops that start with the process."""
        await self._layout_checked.wait()

    @property
    def generation(self) -> int:
        """The keyspace generation of the partitions' keys (common/storage/keys.py tag): ClusterUnavailable until
        verify_partitions has read it, so no request can touch keys of another layout."""
        if self._generation is None:
            raise ClusterUnavailable("the cluster's partition layout is not checked yet")
        return self._generation

    async def verify_functions(self) -> None:
        """Refuse to start (FunctionsMissing) unless every primary has this version's libraries, those of the
        functions this process calls: a service may not load code (common/storage/acl.py), and without them
        every call on that primary's partitions would fail. Asked with each library's own check function, so
        with no right beyond FCALL (or FCALL_RO)."""
        async with self.bounded() as client:
            for check in self.libraries.values():
                for node in client.get_primaries():
                    try:
                        await client.execute_command(check.command, check.name, 0, target_nodes=node)
                    except NoPermissionError as error:
                        raise FunctionsMissing(
                            f"the cluster refused {check.command} to user {self.connection.username!r} ({error}): "
                            "its ACL rules must allow it (common/storage/acl.py)"
                        ) from None
                    except ResponseError as error:
                        if not functions.is_missing(error):
                            raise
                        raise FunctionsMissing(
                            f"the cluster's primary {node.name} has no function library {check.library} (this "
                            "version's: it was never loaded there, or only another version's is); run "
                            "`profilemesh cluster migrate` as the cluster's admin, then start this service again"
                        ) from None

    async def close(self) -> None:
        await self.connection.close()
