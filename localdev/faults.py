"""Fault injection on the local cluster: find a slot's primary, kill it, wait for its replica to take over."""

from __future__ import annotations

import time

from common.storage.nodes import key_slot
from localdev.cluster import LocalCluster


def primary_of(cluster: LocalCluster, key: str) -> int:
    """Index (into cluster.ports) of the healthy primary that serves `key`'s slot."""
    slot = key_slot(key)
    for node in cluster.cluster_nodes():
        if node.is_primary and not node.failing and node.serves(slot):
            return cluster.ports.index(node.port)
    raise LookupError(f"no healthy primary serves slot {slot}")


def fail_over_by_killing(cluster: LocalCluster, key: str, timeout_s: float = 30) -> tuple[int, int, float]:
    """kill -9 the primary of `key`'s slot and wait until the cluster promoted a replica.

    Returns (killed index, promoted index, seconds until promotion). The killed node stays down.
    """
    victim = primary_of(cluster, key)
    started = time.monotonic()
    cluster.kill_node(victim)
    while True:
        try:
            promoted = primary_of(cluster, key)
            if promoted != victim:
                return victim, promoted, time.monotonic() - started
        except LookupError:
            pass
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"no replica took over from node {victim} within {timeout_s}s")
        time.sleep(0.05)


def shard_of(cluster: LocalCluster, key: str) -> list[int]:
    """Indexes of the nodes (primary first, then its replicas) of the shard that serves `key`."""
    primary_port = cluster.ports[primary_of(cluster, key)]
    nodes = cluster.cluster_nodes()
    primary_id = next(node.id for node in nodes if node.port == primary_port)
    replicas = [node.port for node in nodes if node.primary_id == primary_id]
    return [cluster.ports.index(port) for port in [primary_port, *replicas]]
