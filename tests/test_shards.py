"""The local cluster with any number of shards (bench/scale.py runs 1, 2 and 3): valkey-cli makes three or more,
localdev makes one or two by hand (valkey-cli refuses fewer than three primaries), with the same slot split."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdev.cluster import LocalCluster
from localdev.ports import free_ports
from localdev.system import on_free_ports
from localdev.valkey import SLOTS, slot_ranges


def test_slots_split_as_valkey_cli_splits_them() -> None:
    assert slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]  # valkey-cli --cluster create's split
    for primaries in range(1, 9):
        ranges = slot_ranges(primaries)
        assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
        assert all(low == previous[1] + 1 for previous, (low, _) in zip(ranges, ranges[1:], strict=False))
        sizes = [high - low + 1 for low, high in ranges]
        assert max(sizes) - min(sizes) <= 1, sizes


def test_the_default_system_keeps_three_shards_and_its_ports() -> None:
    system = on_free_ports(Path("/nonexistent"))  # never started
    assert system.cluster.shards == 3 and len(system.cluster.ports) == len(system.cluster.bus_ports) == 6
    small = on_free_ports(Path("/nonexistent"), shards=1, replicas=2)
    assert small.cluster.shards == 1 and len(small.cluster.ports) == 2
    everything = [*small.cluster.ports, *small.cluster.bus_ports, small.aggregator_port, small.gateway_port]
    everything += [*small.profile_ports, *small.reporting_ports, *small.metrics_ports.values()]
    assert len(set(everything)) == len(everything) == 4 + 2 + 4 + 4
    with pytest.raises(ValueError, match="shards"):
        on_free_ports(Path("/nonexistent"), shards=0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shards", [1, 2])
def test_a_cluster_of_fewer_shards_than_valkey_cli_makes(tmp_path: Path, shards: int) -> None:
    ports = free_ports(4 * shards)
    cluster = LocalCluster(data_dir=tmp_path / "cluster", ports=ports[: 2 * shards], bus_ports=ports[2 * shards :])
    try:
        cluster.start()
        lines = cluster.cluster_nodes()
        primaries = sorted((n for n in lines if n.is_primary and n.slot_ranges), key=lambda n: n.slot_ranges[0][0])
        assert [n.port for n in primaries] == ports[:shards]
        assert len(lines) == 2 * shards and sum(n.is_primary for n in lines) == shards
        assert [n.slot_ranges for n in primaries] == [(r,) for r in slot_ranges(shards)]
        followers = {n.port: n.primary_id for n in lines if not n.is_primary}
        assert followers == {ports[shards + k]: primaries[k].id for k in range(shards)}
        client = cluster.client(decode_responses=True)
        try:
            for k in range(50):
                client.set(f"shards-test-{k}", k)
            assert [client.get(f"shards-test-{k}") for k in range(50)] == [str(k) for k in range(50)]
        finally:
            client.close()
    finally:
        cluster.stop()
