"""CLUSTER NODES, parsed once: what the `profilemesh` command and the local cluster's supervision read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeLine:
    """One line of CLUSTER NODES."""

    id: str
    address: str  # host:port, without the bus port
    flags: tuple[str, ...]  # e.g. ("myself", "master"), ("slave", "fail?")
    primary_id: str | None  # the primary of a replica
    slot_ranges: tuple[tuple[int, int], ...]  # inclusive; slots being migrated are left out

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        """Failed, or suspected of it by the node that answered (fail?)."""
        return any(flag.startswith("fail") for flag in self.flags)

    def serves(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slot_ranges)


def parse_cluster_nodes(text: str) -> list[NodeLine]:
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        ranges = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            low, _, high = item.partition("-")
            ranges.append((int(low), int(high or low)))
        nodes.append(
            NodeLine(
                id=parts[0],
                address=parts[1].split("@")[0],
                flags=tuple(parts[2].split(",")),
                primary_id=None if parts[3] == "-" else parts[3],
                slot_ranges=tuple(ranges),
            )
        )
    return nodes
