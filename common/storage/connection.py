"""The process's one cluster client: bounded, counted, traced, and translating its failures.

redis-py's async cluster client raises MaxConnectionsError instead of waiting once ``max_connections``
are busy, so every command goes through a semaphore kept below it; whatever fails under a command leaves
as a storage-neutral error (common/storage/errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisClusterException

from common.errors import ClusterUnavailable, CredentialsRefused
from common.runtime import metrics, tracing
from common.runtime.config import Settings
from common.storage.errors import CLIENT_FAILURES, NOT_EXECUTED, translated
from common.storage.group_commit import GroupCommit
from common.storage.internals import (
    NothingSent,
    covered_slots,
    keep_command_table,
    keeping_startup_nodes,
    primary_of_slot,
    relearn_topology,
    send_on_one_connection,
    slot_of,
    startup_nodes,
)

log = logging.getLogger(__name__)
_commands = metrics.children(metrics.CLUSTER_COMMANDS)
_errors = metrics.children(metrics.CLUSTER_ERRORS)
CLUSTER_SLOTS = 16384
REFRESH_FLOOR_S = 0.25  # the least time between two topology refreshes
MAX_BACKOFF_S = 0.2  # the longest wait before a command or script is tried again


@dataclass(frozen=True)
class Script:
    """A Lua script as the cluster runs it: a function of its component's library, called by this version's
    name (common/storage/functions.py); `name` (the .lua file's stem) names it in metrics and spans.

    `read_only`: flagged no-writes, called with FCALL_RO (the only call the reporting user has).
    `repeatable`: running it twice does no harm (a read, or a step that finds nothing left to do the second
    time), so a connection lost under it is a reason to run it again rather than an unknown outcome.
    """

    name: str
    function: str
    read_only: bool
    repeatable: bool

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        return ("FCALL_RO" if self.read_only else "FCALL", self.function, len(keys), *keys, *args)


def connection_options(settings: Settings) -> dict[str, Any]:
    """The ACL user and TLS files of `settings` as redis-py keyword arguments (for cluster and node clients).

    Credentials go as arguments, never into the URL: redis-py repeats URLs in some error messages.
    """
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password:
        options["password"] = settings.redis_password
    if settings.redis_url.startswith("rediss://"):
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        if settings.redis_ca_file:
            options["ssl_ca_certs"] = settings.redis_ca_file
        if settings.redis_cert_file:
            options.update(ssl_certfile=settings.redis_cert_file, ssl_keyfile=settings.redis_key_file)
    return options


class Connection:
    """A RedisCluster client plus the concurrency bound it lacks and a layout learnt one task at a time."""

    def __init__(self, settings: Settings, reserved: int) -> None:
        """`reserved`: connections beyond the bound, for loops that run outside it (`bounded=False`)."""
        timeout = settings.redis_timeout_ms / 1000
        self.username = settings.redis_username or "default"
        self.client: RedisCluster = RedisCluster.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Partitions on a healthy shard keep working while another shard is down.
            require_full_coverage=False,
            max_connections=settings.redis_max_concurrency + reserved + 8,
            # On every fifth MOVED it follows itself (a stream read whose slot moved), redis-py would re-learn the
            # layout by closing every connection of the process, those under other tasks' scripts in flight too
            # (whose changes then end as unknown outcomes); it patches the moved slot instead, and the runner
            # re-learns the layout without closing anything (refresh_topology).
            reinitialize_steps=0,
            # A command whose node refuses is tried again at most 3 times within about 0.1 s (as the script
            # runner's backoff): redis-py's default, 10 times up to 1 s apart, held a place within the bound for
            # up to 10 s per command on a shard that is down, and at 4,096 partitions a third of the aggregator's
            # look-afters were such commands, so every other partition's waited.
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=MAX_BACKOFF_S), 3),
            **connection_options(settings),
        )
        keep_command_table(self.client)
        self._startup_nodes = startup_nodes(self.client)
        self.limit = asyncio.Semaphore(settings.redis_max_concurrency)
        # What the loops of many partitions send at one instant, without a confirmation, shares a pipeline per
        # primary (the aggregator's takes, and its reads of each partition's own pending entries at its start).
        self.shared = GroupCommit(None, metrics.SHARED_PIPELINE_SIZE)
        self._initialized = False
        self._initializing = asyncio.Lock()
        self._refreshed_at = -REFRESH_FLOOR_S  # when the last topology refresh ended (time.monotonic())

    async def by_primary(self, names: Sequence[str]) -> tuple[list[tuple[ClusterNode, list[int]]], list[int]]:
        """The indices of `names` (keys, or sharded channels) by the primary of their slot, as the client knows
        the slot map, and those of names no known primary serves."""
        client = await self.connected()
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        unserved: list[int] = []
        for index, name in enumerate(names):
            node = primary_of_slot(client, slot_of(name))
            if node is None:
                unserved.append(index)
            else:
                by_node.setdefault(node.name, (node, []))[1].append(index)
        return list(by_node.values()), unserved

    async def connected(self) -> RedisCluster:
        """The client, after it has learnt the cluster's layout; failures storage-neutral.

        redis-py lets many first commands race into initialisation, and they fail with
        AttributeError on a half-made connection; so one task initialises, the others wait.
        """
        if not self._initialized:
            with translated():
                await self._initialize()
        return self.client

    async def _initialize(self) -> None:
        async with self._initializing:
            if self._initialized:
                return
            async with keeping_startup_nodes(self.client, self._startup_nodes):
                await self.client.initialize()
            # Only a whole layout: one learnt while the cluster is being created would be kept for good.
            covered = covered_slots(self.client)
            if covered < CLUSTER_SLOTS:
                await self.client.aclose()  # the next call initialises again
                raise RedisClusterException(f"the cluster serves {covered} of {CLUSTER_SLOTS} slots so far")
            self._initialized = True

    async def check_credentials(self) -> None:
        """Fail at once if the cluster refuses our user; an unreachable cluster is left to health checks."""
        try:
            if not self._initialized:
                await self._initialize()
        except CLIENT_FAILURES as error:
            cause = error if isinstance(error, (AuthenticationError, NoPermissionError)) else error.__cause__
            if isinstance(cause, (AuthenticationError, NoPermissionError)):
                raise CredentialsRefused(
                    f"the cluster refused user {self.username!r}: {cause}; check PROFILEMESH_REDIS_USERNAME and "
                    "PROFILEMESH_REDIS_PASSWORD (or _FILE)"
                ) from None
            log.warning("the cluster is not reachable yet: %s", type(error).__name__)

    async def refresh_topology(self) -> None:
        """Re-learn which node serves which slot (after a MOVED or a failover); one task at a time.

        Raises ClusterUnavailable when no node answers at all, so that an operation fails at once rather
        than retrying until its deadline; a node that fails the refresh while others answer is only logged.
        """
        if self._initializing.locked():
            async with self._initializing:  # another task is refreshing: wait for its result
                return
        if time.monotonic() - self._refreshed_at < REFRESH_FLOOR_S:
            # Just learnt: while a shard is down, each of its partitions' retries asks again, and at 4,096
            # partitions back-to-back refreshes (CLUSTER SLOTS, 16,384 slots parsed) took a whole core.
            return
        async with self._initializing:
            if time.monotonic() - self._refreshed_at < REFRESH_FLOOR_S:
                # Learnt while this task waited for the lock: a task that found it free as it was handed on
                # queues behind the tasks waiting for the last result. After a whole-cluster outage at 4,096
                # partitions, hundreds of such tasks each re-learnt the layout in turn and held the lock 30 s.
                return
            try:
                with translated():
                    await relearn_topology(self.client, self._startup_nodes)
            except ClusterUnavailable as error:
                if isinstance(error.__cause__, RedisClusterException):  # no node reachable (not a RedisError)
                    raise
                log.debug("topology refresh failed: %r", error)
            finally:
                self._refreshed_at = time.monotonic()

    @asynccontextmanager
    async def bounded(
        self, kind: str = "command", name: str = "other", calls: int = 1, bounded: bool = True
    ) -> AsyncIterator[RedisCluster]:
        """The client, for one connection's work (a command, a script, a pipeline of `calls`): within the
        concurrency bound unless `bounded` is False (a loop with room reserved beyond it); counted, failures by
        kind, and raised storage-neutral."""
        _commands(kind, name).inc(calls)
        async with self.limit if bounded else contextlib.nullcontext():
            try:
                with translated():
                    yield await self.connected()
            except Exception as error:
                _errors(type(error.__cause__ or error).__name__).inc()
                raise

    async def on_primary(self, key: str, command: tuple[Any, ...], name: str, together: bool = False) -> Any:
        """One attempt of `command` on `key`'s primary, its reply or its failure storage-neutral: for loops that
        retry on their own schedule. Through redis-py, a command whose node is down is tried again with a re-read
        of the whole layout each time; here a node that refuses costs a refused connect, and the layout is
        re-learnt (after a redirect too) at most every REFRESH_FLOOR_S.

        `together`: in the primary's shared pipeline, outside the bound, for a loop of every partition. At 4,096
        partitions the aggregator's start sends one such read per partition at once: each waiting for a place
        within the bound, 2,500 of them missed their deadline and were tried again."""
        relearn = False
        try:
            async with self.bounded("command", name, bounded=not together) as client:
                node = client.get_node_from_key(key)
                if node is None:
                    relearn = True
                    raise ClusterUnavailable(f"no node is known to serve {key}")
                try:
                    if together:
                        reply, _ = await self.shared.send(node, command)
                    else:
                        (reply,) = await send_on_one_connection(node, [command])
                except NothingSent as error:
                    relearn = True
                    raise ClusterUnavailable(f"nothing reached {node.name}: {error}") from None
                if isinstance(reply, Exception):
                    relearn = isinstance(reply, NOT_EXECUTED)
                    raise reply
                return reply
        finally:
            if relearn:
                await self.refresh_topology()

    @asynccontextmanager
    async def scripting(self, script: Script, calls: int = 1, bounded: bool = True) -> AsyncIterator[RedisCluster]:
        """`bounded` for running `script` (`calls` times on one connection), traced when tracing is on."""
        # With tracing off, no span and not even its arguments are made: this is every script's path.
        span = (
            tracing.span(
                f"script {script.name}", tracing.SpanKind.CLIENT, **{"db.system": "redis", "db.operation": script.name}
            )
            if tracing.ENABLED
            else contextlib.nullcontext()
        )
        with span:
            async with self.bounded("script", script.name, calls, bounded) as client:
                yield client

    async def close(self) -> None:
        await self.client.aclose()
