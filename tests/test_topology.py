"""CLUSTER NODES parsing (common.storage.topology), which the profilemesh command and the local cluster's supervision
share; the supervision's rule for when a node may start again; the admin node client (common.storage.nodes): key
slots, and its errors, storage-neutral."""

from __future__ import annotations

import pytest

from common.errors import ClusterUnavailable
from common.runtime.config import Settings
from common.storage.nodes import Node, key_slot
from common.storage.topology import parse_cluster_nodes
from localdev.ports import free_ports
from localdev.supervision import restart_outcome

NODES = """\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:7001@17001 master,fail? - 0 0 2 connected 5461 5462-10922
c3 127.0.0.1:7003@17003 slave,fail a1 0 0 1 connected
"""


def test_parse_cluster_nodes() -> None:
    primary, suspected, replica = parse_cluster_nodes(NODES)
    assert [node.address for node in (primary, suspected, replica)] == [
        "127.0.0.1:7000",
        "127.0.0.1:7001",
        "127.0.0.1:7003",
    ]
    assert primary.port == 7000 and primary.is_primary and not primary.failing and primary.primary_id is None
    assert primary.slot_ranges == ((0, 5460),)  # the slot being migrated away is left out
    assert suspected.slot_ranges == ((5461, 5461), (5462, 10922)) and suspected.failing
    assert suspected.serves(6000) and not primary.serves(6000) and primary.serves(0)
    assert not replica.is_primary and replica.failing and replica.primary_id == "a1" and replica.slot_ranges == ()


# Node a1 (7000) is down: the cluster's view of it and of its replica c3 (7003), as its supervisor sees them.
SHARD = """\
a1 127.0.0.1:7000@17000 master,fail - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-16383
c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected
d4 127.0.0.1:7004@17004 slave b2 0 0 2 connected
"""
TAKEN_OVER = """\
a1 127.0.0.1:7000@17000 master,fail - 0 0 1 connected
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-16383
c3 127.0.0.1:7003@17003 master - 0 0 3 connected 0-5460
"""


def test_a_dead_primary_waits_for_its_replica_to_take_over() -> None:
    """Coming back first, from an fsynced-each-second file, it would stay primary and lose acknowledged writes."""
    nodes = parse_cluster_nodes(SHARD)
    assert restart_outcome(nodes, "127.0.0.1:7000", down_for_s=1, node_timeout_s=2) is None
    # ...unless its replica cannot take over: failing, or not done so within 3 node timeouts.
    failing = parse_cluster_nodes(SHARD.replace("slave a1", "slave,fail a1"))
    assert restart_outcome(failing, "127.0.0.1:7000", 1, 2) == "it is its shard's primary again (no replica took over)"
    assert restart_outcome(nodes, "127.0.0.1:7000", 6.5, 2) == "it is its shard's primary again (no replica took over)"
    # Once its slots moved to the replica, it comes back (as a replica).
    outcome = restart_outcome(parse_cluster_nodes(TAKEN_OVER), "127.0.0.1:7000", 1, 2)
    assert outcome == "it rejoins as a replica of the node that took its slots over"


def test_a_replica_or_a_stranger_comes_back_at_once() -> None:
    nodes = parse_cluster_nodes(SHARD)
    assert restart_outcome(nodes, "127.0.0.1:7003", 0, 2) == "it rejoins as a replica of 127.0.0.1:7000"
    assert restart_outcome(nodes, "127.0.0.1:7009", 0, 2) == "it joins the cluster"


def test_key_slot_follows_hash_tags() -> None:
    assert key_slot("{p3}:events") == key_slot("{p3}:anything") == key_slot("p3")
    assert 0 <= key_slot("user:1") < 16384 and key_slot("user:1") != key_slot("user:2")


def test_a_node_that_does_not_answer_is_a_storage_neutral_error_never_a_driver_one() -> None:
    settings = Settings.from_env({"PROFILEMESH_REDIS_URL": "redis://127.0.0.1:1"})
    node = Node.at("127.0.0.1", free_ports(1)[0], settings, timeout_s=0.5)
    assert node.ping() is False
    with pytest.raises(ClusterUnavailable) as caught:
        node.cluster_nodes()
    assert type(caught.value) is ClusterUnavailable and caught.value.__cause__ is not None
