"""CLUSTER NODES parsing (common.storage.topology), which the profilemesh command and the local cluster's supervision share."""

from __future__ import annotations

from common.storage.topology import parse_cluster_nodes

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
