"""Resharding the local cluster by hand: moving slots between primaries, adding a shard, removing it again.

The steps are those an operator runs (valkey-cli --cluster add-node / reshard / del-node do the same), one
command at a time so that tests can run them under load and see every redirect the services must follow.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.storage import acl
from common.storage.nodes import NodeClient
from localdev.cluster import LocalCluster
from localdev.ports import free_ports
from localdev.waiting import poll_until

MIGRATE_BATCH = 100  # keys per MIGRATE: a partition's keys move in a few batches
MIGRATE_TIMEOUT_MS = 5000


def _run(node: NodeClient, *args: Any) -> Any:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


def node_id(cluster: LocalCluster, index: int) -> str:
    return str(_run(cluster.node(index), "CLUSTER", "MYID"))


def primaries(cluster: LocalCluster) -> list[int]:
    """Indexes of the running nodes that are primaries now."""
    return [index for index in sorted(cluster.processes) if _run(cluster.node(index), "ROLE")[0] == "master"]


def migrate_slot(cluster: LocalCluster, slot: int, source: int, target: int) -> None:
    migrate_slots(cluster, [slot], source, target)


def migrate_slots(cluster: LocalCluster, slots: Iterable[int], source: int, target: int) -> None:
    """What `valkey-cli --cluster reshard` does, slot by slot: IMPORTING on the target, MIGRATING on the source,
    MIGRATE the slot's keys in batches (commands on it meanwhile answer ASK or TRYAGAIN), then the slot's new
    owner on the target first, the source next (so neither redirects to a node that does not know it yet), and
    every other primary. One connection per node for the whole move."""
    indexes = [target, source, *(index for index in primaries(cluster) if index not in (source, target))]
    nodes = {index: cluster.node(index) for index in indexes}
    try:
        move = _Move.between(cluster, nodes[source], nodes[target], target)
        for slot in slots:
            move.begin(slot)
            while batch := _run(move.src, "CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
                move.keys(batch)
            for index in indexes:
                _run(nodes[index], "CLUSTER", "SETSLOT", slot, "NODE", move.target_id)
    finally:
        for node in nodes.values():
            node.close()


def begin_migration(cluster: LocalCluster, slot: int, source: int, target: int, names: list[str]) -> None:
    """Half a migration, as a reshard interrupted: the slot IMPORTING on the target, MIGRATING on the source,
    and only the keys `names` moved. migrate_slot finishes it."""
    src, dst = cluster.node(source), cluster.node(target)
    try:
        move = _Move.between(cluster, src, dst, target)
        move.begin(slot)
        move.keys(names)
    finally:
        src.close()
        dst.close()


@dataclass(frozen=True)
class _Move:
    """A move of slots from one primary to another, with what its commands need, learnt once."""

    src: NodeClient
    dst: NodeClient
    source_id: str
    target_id: str
    migrate: tuple[Any, ...]  # MIGRATE's arguments before the keys

    @classmethod
    def between(cls, cluster: LocalCluster, src: NodeClient, dst: NodeClient, target: int) -> _Move:
        source_id, target_id = (str(_run(node, "CLUSTER", "MYID")) for node in (src, dst))
        login = ("AUTH2", acl.ADMIN_USER, cluster.password(acl.ADMIN_USER))  # the target refuses the default user
        address = (cluster.host(target), cluster.ports[target])
        return cls(src, dst, source_id, target_id, ("MIGRATE", *address, "", 0, MIGRATE_TIMEOUT_MS, *login, "KEYS"))

    def begin(self, slot: int) -> None:
        """IMPORTING on the target, MIGRATING on the source."""
        _run(self.dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.source_id)
        _run(self.src, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.target_id)

    def keys(self, names: list[Any]) -> None:
        _run(self.src, *self.migrate, *names)


def slots_of(cluster: LocalCluster, index: int) -> list[int]:
    """The slots the node at `index` serves, as it says itself."""
    me = next(node for node in cluster.node_lines(index) if "myself" in node.flags)
    return [slot for low, high in me.slot_ranges for slot in range(low, high + 1)]


def _known_everywhere(cluster: LocalCluster, ids: set[str]) -> bool:
    """Every running node knows every node of `ids` as connected (no handshake, no failure flag)."""
    for index in list(cluster.processes):
        lines = {node.id: node for node in cluster.node_lines(index)}
        for wanted in ids:
            node = lines.get(wanted)
            if node is None or node.failing or "handshake" in node.flags or "noaddr" in node.flags:
                return False
    return True


def add_shard(cluster: LocalCluster, timeout_s: float = 30) -> tuple[int, int]:
    """Two more nodes on free ports, with the cluster's config, ACL and passwords: a primary with no slots and its
    replica, once every node knows both and the replica is in sync. Returns their indexes.

    Functions are not part of it: the primary gets them from `profilemesh cluster migrate`, before any slot moves
    to it (System.migrate)."""
    ports = free_ports(4)
    added = []
    for port, bus_port in ((ports[0], ports[1]), (ports[2], ports[3])):
        cluster.ports.append(port)
        cluster.bus_ports.append(bus_port)
        if cluster.hosts:
            cluster.hosts.append(cluster.host(0))
        added.append(len(cluster.ports) - 1)
        cluster.start_node(added[-1])
    primary, replica = added
    poll_until(lambda: all(cluster.node(i).ping() for i in added), timeout_s, "the new nodes to start")
    for index in added:
        # Emptied for removal, the primary stays a primary with no slots (else it turns into a replica of the
        # node that took its last slot, failing the SETSLOT that moved it), and its replica stays with it.
        cluster.node(index).config_set("cluster-allow-replica-migration", "no")
    for index in added:
        _run(cluster.node(index), "CLUSTER", "MEET", cluster.host(0), cluster.ports[0], cluster.bus_ports[0])
    ids = {node_id(cluster, index) for index in added}
    poll_until(lambda: _known_everywhere(cluster, ids), timeout_s, "every node to know the new shard")
    _run(cluster.node(replica), "CLUSTER", "REPLICATE", node_id(cluster, primary))
    cluster.wait_ready(timeout_s)
    return primary, replica


def remove_shard(cluster: LocalCluster, shard: Iterable[int], timeout_s: float = 30) -> None:
    """Stop the nodes of an emptied shard and make every other node forget them.

    Its slots must have moved away first. A forgotten node is banned for 60 s only, and any node that still
    knows it gossips it back, so every remaining node forgets it, right after it stopped. The nodes are the
    last ones added: their places in ports are given up.
    """
    shard = sorted(shard)
    if shard != list(range(len(cluster.ports) - len(shard), len(cluster.ports))):
        raise RuntimeError("only the shard added last can be removed")
    ids = [node_id(cluster, index) for index in shard]
    for index in shard:
        if slots_of(cluster, index):
            raise RuntimeError(f"node {cluster.address(index)} still serves slots: move them away first")
    for index in shard:
        cluster.stop_node(index, signal.SIGTERM)  # on purpose: the supervisor leaves it down
    for index in sorted(cluster.processes):
        for gone in ids:
            _run(cluster.node(index), "CLUSTER", "FORGET", gone)
    del cluster.ports[-len(shard) :], cluster.bus_ports[-len(shard) :]
    if cluster.hosts:
        del cluster.hosts[-len(shard) :]

    def forgotten() -> bool:
        return all(not set(ids) & {node.id for node in cluster.node_lines(index)} for index in list(cluster.processes))

    poll_until(forgotten, timeout_s, "every node to forget the removed shard")
    cluster.wait_ready(timeout_s)
