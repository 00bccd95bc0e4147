"""The cluster client every service uses: one per process, bounded, with scripts from files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import CredentialsRefused, PartitionMismatch
from common.runtime import metrics, tracing
from common.runtime.config import Settings
from common.storage import keys
from common.storage.internals import (
    closed_under_command,
    covered_slots,
    keep_command_table,
    keeping_startup_nodes,
    startup_nodes,
)
from common.storage.scripts import script_source

log = logging.getLogger(__name__)
_commands = metrics.children(metrics.CLUSTER_COMMANDS)
_errors = metrics.children(metrics.CLUSTER_ERRORS)

# What the client raises when the cluster fails under a command: a loop waits these out, a call answers
# UNAVAILABLE. RedisClusterException (e.g. no node reachable) is not a RedisError; TimeoutError is an OSError.
CLUSTER_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
# What run_on_primary leaves to the cluster client: it loads scripts, follows redirects, refreshes the topology.
_RUN_THROUGH_THE_CLIENT = (
    NoScriptError,
    MovedError,
    AskError,
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)
CLUSTER_SLOTS = 16384


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


class Cluster:
    """A RedisCluster client plus the concurrency bound it lacks.

    redis-py's async cluster client raises MaxConnectionsError instead of waiting once
    ``max_connections`` are busy, so every command goes through a semaphore kept below it.
    """

    def __init__(self, settings: Settings) -> None:
        timeout = settings.redis_timeout_ms / 1000
        self.settings = settings
        self.client: RedisCluster = RedisCluster.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Partitions on a healthy shard keep working while another shard is down.
            require_full_coverage=False,
            # Room beyond the bound for the aggregator's blocking reads, one per partition.
            max_connections=settings.redis_max_concurrency + settings.partitions + 8,
            **connection_options(settings),
        )
        keep_command_table(self.client)
        self._startup_nodes = startup_nodes(self.client)
        self.limit = asyncio.Semaphore(settings.redis_max_concurrency)
        self.script_names: dict[str, str] = {}  # sha -> name, for metrics and spans
        self._initialized = False
        self._initializing = asyncio.Lock()

    async def connected(self) -> RedisCluster:
        """The client, after it has learnt the cluster's layout.

        redis-py lets many first commands race into initialisation, and they fail with
        AttributeError on a half-made connection; so one task initialises, the others wait.
        """
        if not self._initialized:
            async with self._initializing:
                if not self._initialized:
                    async with keeping_startup_nodes(self.client, self._startup_nodes):
                        await self.client.initialize()
                    # Only a whole layout: one learnt while the cluster is being created would be kept for good.
                    covered = covered_slots(self.client)
                    if covered < CLUSTER_SLOTS:
                        await self.client.aclose()  # the next call initialises again
                        raise RedisClusterException(f"the cluster serves {covered} of {CLUSTER_SLOTS} slots so far")
                    self._initialized = True
        return self.client

    async def check_credentials(self) -> None:
        """Fail at once if the cluster refuses our user; an unreachable cluster is left to health checks."""
        try:
            await self.connected()
        except (RedisClusterException, RedisError, OSError) as error:
            cause = error if isinstance(error, (AuthenticationError, NoPermissionError)) else error.__cause__
            if isinstance(cause, (AuthenticationError, NoPermissionError)):
                user = self.settings.redis_username or "default"
                raise CredentialsRefused(
                    f"the cluster refused user {user!r}: {cause}; check PROFILEMESH_REDIS_USERNAME and "
                    "PROFILEMESH_REDIS_PASSWORD (or _FILE)"
                ) from None
            log.warning("the cluster is not reachable yet: %s", type(error).__name__)

    async def refresh_topology(self) -> None:
        """Re-learn which node serves which slot (after a MOVED or a failover); one task at a time."""
        if self._initializing.locked():
            async with self._initializing:  # another task is refreshing: wait for its result
                return
        async with self._initializing:
            try:
                async with keeping_startup_nodes(self.client, self._startup_nodes):
                    await self.client.nodes_manager.initialize()
            except (RedisError, OSError) as error:
                log.debug("topology refresh failed: %r", error)

    @asynccontextmanager
    async def bounded(self, kind: str = "command", name: str = "other", calls: int = 1) -> AsyncIterator[RedisCluster]:
        """The client, for one connection's work (a command, a script, a pipeline of `calls`) within the
        concurrency bound; counted, failures by kind."""
        _commands(kind, name).inc(calls)
        async with self.limit:
            try:
                async with closed_under_command():
                    yield await self.connected()
            except Exception as error:
                _errors(type(error).__name__).inc()
                raise

    def script(self, path: Path) -> AsyncScript:
        """A script from a .lua file (with its helpers, see common/storage/scripts.py); run by SHA, loaded on use."""
        script = self.client.register_script(script_source(path))
        self.script_names[script.sha] = path.stem
        return script

    def name_of(self, script: AsyncScript) -> str:
        return self.script_names.get(script.sha, "script")

    @asynccontextmanager
    async def scripting(self, script: AsyncScript, calls: int = 1) -> AsyncIterator[RedisCluster]:
        """The client, for running `script` (`calls` times on one connection) within the bound: counted, and
        traced when tracing is on."""
        name = self.name_of(script)
        # With tracing off, no span and not even its arguments are made: this is every script's path.
        span = (
            tracing.span(f"script {name}", tracing.SpanKind.CLIENT, **{"db.system": "redis", "db.operation": name})
            if tracing.ENABLED
            else contextlib.nullcontext()
        )
        with span:
            async with self.bounded("script", name, calls) as client:
                yield client

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        async with self.scripting(script) as client:
            return await script(keys=list(keys), args=list(args), client=client)

    async def run_on_primary(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run `script` on its first key's primary over one of that node's own connections, outside the bound.

        A third of run's CPU per call (the cluster client's routing, retry and bound cost more than the round
        trip itself): for a loop that runs a script many times a second and has a connection reserved beyond
        the bound (the aggregator's partitions). What the cluster client must handle (a script the node does
        not know yet, a redirect, a lost connection, a slot with no node) goes through run instead, so the
        script must be safe to run again; with tracing on, every call does, to be traced.
        """
        if tracing.ENABLED:
            return await self.run(script, keys, args)
        counted = _commands("script", self.name_of(script))
        try:
            async with closed_under_command():
                node = (await self.connected()).get_node_from_key(keys[0])
                if node is None:  # only a replica can be missing; typed as if a primary could
                    raise SlotNotCoveredError(f"no primary serves {keys[0]!r}")
                reply = await node.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except _RUN_THROUGH_THE_CLIENT as error:
            _errors(type(error).__name__).inc()
            return await self.run(script, keys, args)  # counted there: one command, not two
        except Exception as error:
            counted.inc()
            _errors(type(error).__name__).inc()
            raise
        counted.inc()
        return reply

    async def ping(self) -> bool:
        """Whether any primary answers; used for gRPC health.

        One shard down must not take the whole service out of its load balancer: the partitions
        on the other shards still work (their callers get UNAVAILABLE only for the missing ones).
        """
        try:
            async with self.bounded() as client:
                for node in client.get_primaries():
                    try:
                        if await client.ping(target_nodes=node):
                            return True
                    except Exception as error:  # this node is unreachable, whatever the kind of failure
                        log.debug("ping of %s failed: %r", node.name, error)
        except Exception as error:  # the client can't even learn the cluster's layout
            log.debug("cluster ping failed: %r", error)
        return False

    async def verify_partitions(self) -> None:
        """Record the partition count on first start; refuse to run with a different one."""
        wanted = self.settings.partitions
        async with self.bounded() as client:
            recorded_text = await client.get(keys.PARTITIONS_KEY)
            if recorded_text is None:  # only profile_svc's user may record it (common/storage/acl.py)
                await client.set(keys.PARTITIONS_KEY, wanted, nx=True)
                recorded_text = await client.get(keys.PARTITIONS_KEY)
            recorded = int(recorded_text or 0)
        if recorded != wanted:
            raise PartitionMismatch(
                f"the cluster was set up with {recorded} partitions but PROFILEMESH_PARTITIONS is {wanted}; "
                "the partition count is fixed for the life of a deployment"
            )

    async def close(self) -> None:
        await self.client.aclose()
