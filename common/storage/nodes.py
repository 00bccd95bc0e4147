"""Clients of single nodes, for operators' and the local cluster's admin work (not the services' path).

`profilemesh status`, localdev's cluster (readiness, self-healing) and its fault injection look at nodes one
by one: ping, CLUSTER NODES and INFO, replication, CONFIG. They connect as the deployment's user, with its
TLS files (connection_options), and get plain results; the driver's errors reach them as the storage-neutral
ones of common/errors.py (StorageError: ClusterUnavailable, CommandFailed), through errors.translated.
Tests and tools that need the raw client (to run any command) get it from `Node.client`.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from common.errors import StorageError
from common.runtime.config import Settings
from common.storage.cluster import ClusterClient, connection_options
from common.storage.errors import translated
from common.storage.internals import slot_of
from common.storage.replies import text
from common.storage.topology import NodeLine, parse_cluster_nodes

# The raw clients, for callers that hand them on (tests, benchmarks) without importing the driver;
# the async cluster client is common.storage.cluster's ClusterClient.
NodeClient = redis.Redis
SyncClusterClient = redis.RedisCluster


def key_slot(key: str) -> int:
    """The hash slot (0-16383) of `key`, hash tags included: which shard serves it."""
    return slot_of(key)


def node_options(settings: Settings) -> dict[str, Any]:
    """connection_options for a client made from host and port (no URL to say TLS): `ssl` added."""
    return {**connection_options(settings), "ssl": settings.redis_url.startswith("rediss://")}


def cluster_client(host: str, port: int, settings: Settings, **kwargs: Any) -> SyncClusterClient:
    """A (synchronous) cluster client seeded at `host:port`, as `settings`' user."""
    return redis.RedisCluster(host=host, port=port, **node_options(settings), **kwargs)


def async_cluster_client(host: str, port: int, settings: Settings, **kwargs: Any) -> ClusterClient:
    return ClusterClient(host=host, port=port, **node_options(settings), **kwargs)


def async_operator_cluster(settings: Settings, timeout_s: float, **kwargs: Any) -> ClusterClient:
    """An async cluster client for an operator's work (as the services connect, but with `timeout_s`): the
    `profilemesh` command's reads, the admin step's loads."""
    return ClusterClient.from_url(
        settings.redis_url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        require_full_coverage=False,
        **connection_options(settings),
        **kwargs,
    )


class Node:
    """One node, synchronously, replies decoded: the admin commands localdev's cluster and tools run."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @classmethod
    def at(cls, host: str, port: int, settings: Settings, timeout_s: float = 2) -> Node:
        return cls(
            redis.Redis(host=host, port=port, socket_timeout=timeout_s, decode_responses=True, **node_options(settings))
        )

    @classmethod
    def on_socket(cls, path: str, timeout_s: float = 2) -> Node:
        """A node listening on a Unix socket, without credentials (localdev's standalone test node)."""
        return cls(redis.Redis(unix_socket_path=path, socket_timeout=timeout_s, decode_responses=True))

    def ping(self) -> bool:
        """Whether the node answers now; never raises."""
        try:
            with translated():
                return bool(self.client.ping())
        except StorageError:
            return False

    def command(self, *args: Any) -> Any:
        with translated():
            return self.client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py

    def cluster_nodes(self) -> list[NodeLine]:
        return parse_cluster_nodes(str(self.command("CLUSTER", "NODES")))

    def cluster_state_ok(self) -> bool:
        """Whether this node sees every slot served (CLUSTER INFO's cluster_state:ok)."""
        return "cluster_state:ok" in str(self.command("CLUSTER", "INFO"))

    def replication(self) -> dict[str, Any]:
        """INFO replication: role, and for a replica master_link_status and the offsets."""
        with translated():
            return dict(self.client.info("replication"))

    def config_get(self, name: str) -> str | None:
        with translated():
            return self.client.config_get(name).get(name)

    def config_set(self, name: str, value: str | int) -> None:
        with translated():
            self.client.config_set(name, value)

    def close(self) -> None:
        self.client.close()


class AsyncNode:
    """One node, asynchronously: what `profilemesh status` asks of each node."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client

    @classmethod
    def at(cls, host: str, port: int, settings: Settings, timeout_s: float, **kwargs: Any) -> AsyncNode:
        return cls(
            redis.asyncio.Redis(
                host=host,
                port=port,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                **node_options(settings),
                **kwargs,
            )
        )

    @classmethod
    def seed(cls, settings: Settings, timeout_s: float) -> AsyncNode:
        """The node `settings.redis_url` names: where a look at the cluster starts."""
        return cls(
            redis.asyncio.Redis.from_url(
                settings.redis_url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                **connection_options(settings),
            )
        )

    async def __aenter__(self) -> AsyncNode:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        """Whether the node answers now; never raises."""
        try:
            with translated():
                return bool(await self.client.ping())
        except StorageError:
            return False

    async def cluster_nodes(self) -> list[NodeLine]:
        with translated():
            raw = await self.client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]  # untyped in redis-py
        return parse_cluster_nodes(text(raw))
