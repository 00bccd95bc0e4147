"""Faults injected into a running system, each healed (and the cluster back to healthy) before the next.

Partitions are nftables rules in the network namespace this process runs in (tests/jepsen/netns.py made
it): by address between cluster nodes (each node binds and connects from its own), and by group id from
one profile_svc replica (started with that gid) to the isolated nodes. Before touching nftables this
module checks that it is not in the root network namespace, so it can never change the host's firewall.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.storage.topology import parse_cluster_nodes
from localdev.cluster import LocalCluster
from localdev.waiting import poll_until

FAULTS = ("kill", "pause", "partition-primary", "partition-shard", "shard-down")
TABLE = "jepsen"


@dataclass
class Fault:
    kind: str
    target: str  # which nodes, e.g. "127.0.0.12:7001 (primary of shard 1)"
    start_s: float
    heal_s: float = 0.0  # when the heal began
    healthy_s: float = 0.0  # when the cluster was healthy again
    note: str = ""


NAMESPACE_VARIABLE = "PROFILEMESH_JEPSEN_NETNS"


def in_test_namespace() -> bool:
    """Whether this process is in the namespace the harness made for it (named in the environment):
    the nemesis changes nftables only there, never in the namespace of the host."""
    name = os.environ.get(NAMESPACE_VARIABLE, "")
    if not name or "/" in name:
        return False
    try:
        return os.stat(f"/run/netns/{name}").st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def nft(*args: str, script: str = "") -> None:
    if not in_test_namespace():
        raise RuntimeError("refusing to change nftables outside the run's own network namespace")
    subprocess.run(["nft", *args], input=script.encode(), check=True)


@dataclass
class Nemesis:
    cluster: LocalCluster
    now: Callable[[], float]
    isolated_gid: int  # the group id of the profile_svc replica that a partition also cuts off
    rng: random.Random
    node_timeout_s: float
    faults: list[Fault] = field(default_factory=list)

    def shards(self) -> list[tuple[int, int]]:
        """(primary index, replica index) of each shard, as the cluster sees it now."""
        nodes = self.cluster.cluster_nodes()
        index = {f"{self.cluster.host(i)}:{port}": i for i, port in enumerate(self.cluster.ports)}
        pairs = []
        for node in nodes:
            if node.is_primary and node.slot_ranges:
                replica = next((r for r in nodes if r.primary_id == node.id), None)
                if replica is not None and node.address in index and replica.address in index:
                    pairs.append((index[node.address], index[replica.address]))
        return sorted(pairs)

    def _name(self, index: int) -> str:
        return f"{self.cluster.host(index)}:{self.cluster.ports[index]}"

    def run_one(self, kind: str) -> Fault:
        shards = self.shards()
        primary, replica = self.rng.choice(shards)
        fault = Fault(kind, "", self.now())
        hold_s = 3 * self.node_timeout_s + 1  # past the node timeout and a failover
        if kind == "kill":
            fault.target = f"{self._name(primary)} (primary)"
            self.cluster.kill_node(primary)
            fault.note = self._await_promotion(replica, 10 * self.node_timeout_s + 5)
            fault.heal_s = self.now()
            self.cluster.start_node(primary)
        elif kind == "pause":
            fault.target = f"{self._name(primary)} (primary)"
            process = self.cluster.processes[primary]
            os.kill(process.pid, signal.SIGSTOP)
            try:
                time.sleep(hold_s)
                fault.note = self._role_note(replica)
            finally:
                fault.heal_s = self.now()
                os.kill(process.pid, signal.SIGCONT)
        elif kind in ("partition-primary", "partition-shard"):
            inside = [primary] if kind == "partition-primary" else [primary, replica]
            fault.target = " + ".join(self._name(i) for i in inside) + " cut from the other nodes and profile_svc-2"
            self.partition(inside)
            try:
                time.sleep(hold_s)
                fault.note = self._role_note(replica)
            finally:
                fault.heal_s = self.now()
                self.heal()
        elif kind == "shard-down":
            fault.target = f"{self._name(primary)} + {self._name(replica)} (a whole shard)"
            self.cluster.kill_node(primary)
            self.cluster.kill_node(replica)
            time.sleep(hold_s)
            fault.heal_s = self.now()
            self.cluster.start_node(primary)
            self.cluster.start_node(replica)
        else:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        self.cluster.wait_ready(120)
        poll_until(self._settled, 120, "every node to agree on a full layout", interval_s=0.2)
        fault.healthy_s = self.now()
        self.faults.append(fault)
        return fault

    def _settled(self) -> bool:
        """Every node sees every shard with a primary and a replica, no node failing: the fault is over."""
        for index in range(len(self.cluster.ports)):
            try:
                nodes = parse_cluster_nodes(self.cluster.node(index).execute_command("CLUSTER", "NODES"))
            except Exception:  # noqa: BLE001  # not answering yet
                return False
            primaries = [node for node in nodes if node.is_primary and node.slot_ranges]
            if any(node.failing for node in nodes) or len(nodes) != len(self.cluster.ports):
                return False
            if not all(any(r.primary_id == p.id for r in nodes) for p in primaries):
                return False
        return True

    def partition(self, inside: list[int]) -> None:
        """Cut the nodes `inside` off from every other node and from the isolated replica's process."""
        inner = ", ".join(self.cluster.host(i) for i in inside)
        outer = ", ".join(self.cluster.host(i) for i in range(len(self.cluster.ports)) if i not in inside)
        nft(
            "-f",
            "-",
            script=f"table inet {TABLE} {{\n"
            "  chain output {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    ip saddr {{ {inner} }} ip daddr {{ {outer} }} drop\n"
            f"    ip saddr {{ {outer} }} ip daddr {{ {inner} }} drop\n"
            f"    meta skgid {self.isolated_gid} ip daddr {{ {inner} }} drop\n"
            "  }\n"
            "}\n",
        )

    def heal(self) -> None:
        """Remove the partition's table (and so every rule of it), if there is one."""
        nft("-f", "-", script=f"table inet {TABLE}\ndelete table inet {TABLE}\n")

    def _await_promotion(self, replica: int, timeout_s: float) -> str:
        started = time.monotonic()
        try:
            poll_until(lambda: self._is_primary(replica), timeout_s, "the replica's promotion", interval_s=0.1)
        except (TimeoutError, AssertionError, RuntimeError):
            return f"replica not promoted within {timeout_s:.0f} s"
        return f"replica promoted after {time.monotonic() - started:.1f} s"

    def _role_note(self, replica: int) -> str:
        return "replica promoted" if self._is_primary(replica) else "replica not promoted"

    def _is_primary(self, index: int) -> bool:
        try:
            role = self.cluster.node(index).execute_command("ROLE")
        except Exception:  # noqa: BLE001  # unreachable or busy: not (yet) known as primary
            return False
        return bool(role) and role[0] in ("master", b"master")


def dump_faults(faults: list[Fault], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(fault)) + "\n" for fault in faults))


def load_faults(path: Path) -> list[Fault]:
    return [Fault(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
