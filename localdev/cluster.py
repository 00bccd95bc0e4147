"""A local Valkey cluster: 3 primaries, 3 replicas (or any number of shards of a primary and a replica each),
append-only files on.

`python -m localdev.cluster` runs one on ports 7000-7005 until Ctrl-C. LocalCluster composes the parts,
one job each: passwords (localdev/passwords.py), TLS files (certs.Authority), who connects how
(localdev/access.py), the nodes' config and command lines (localdev/valkey.py), their processes
(localdev/node_processes.py), readiness (localdev/readiness.py) and self-healing (localdev/supervision.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import StorageError
from common.storage import acl, nodes
from common.storage.cluster import ClusterClient
from common.storage.nodes import Node
from common.storage.topology import NodeLine
from localdev import certs, processes, valkey
from localdev.access import Access
from localdev.files import private_dir, replace_file
from localdev.node_processes import NodeProcesses
from localdev.passwords import Passwords
from localdev.ports import port_is_free
from localdev.readiness import cluster_ready, wait_while_running
from localdev.supervision import Supervisor
from localdev.valkey import NodeSpec, cli_binary, server_binary
from localdev.waiting import poll_until

__all__ = ["PRIMARIES", "LocalCluster", "LocalNode", "cli_binary", "default_cluster", "server_binary"]

PRIMARIES = 3


@dataclass
class LocalCluster:
    """Two nodes a shard (six by default): the first half of `ports` become primaries, each other a replica of one.

    With `supervised`, a node that exits is started again on its own port and data, as a managed
    service replaces a failed node; it rejoins as a replica of whoever is primary of its shard now.
    """

    data_dir: Path
    ports: list[int]
    bus_ports: list[int]
    node_timeout_ms: int = 5000
    log_to_files: bool = True
    supervised: bool = False
    tls: bool = False
    # Each node's own address (default: all on 127.0.0.1); a node binds, announces and connects from it,
    # so a firewall rule on addresses can cut one node off (tests/jepsen, in a network namespace).
    hosts: list[str] = field(default_factory=list)
    _nodes: NodeProcesses = field(default_factory=NodeProcesses, repr=False)
    _supervisor: Supervisor | None = field(default=None, repr=False)

    # Addresses and files. Parts are made on each use: callers may change data_dir and tls before start.

    def host(self, index: int) -> str:
        return self.hosts[index] if self.hosts else "127.0.0.1"

    def address(self, index: int) -> str:
        return f"{self.host(index)}:{self.ports[index]}"

    @property
    def shards(self) -> int:
        """Primaries at creation: half of the nodes."""
        return len(self.ports) // 2

    @property
    def startup_urls(self) -> str:
        return ",".join(self.address(i) for i in range(len(self.ports)))

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def processes(self) -> dict[int, subprocess.Popen[bytes]]:
        """The nodes' processes by index (of ports), as started and not stopped on purpose."""
        return self._nodes.by_index

    # Secrets, TLS and access: localdev/passwords.py, certs.Authority, localdev/access.py.

    @property
    def _access(self) -> Access:
        authority = certs.Authority(self.tls_dir)
        return Access(self.host(0), self.ports[0], self.tls, Passwords(self.secrets_dir), authority)

    @property
    def url(self) -> str:
        return self._access.url

    @property
    def admin_url(self) -> str:
        """The URL with the admin's password in it: for benchmark tools only (localdev/access.py)."""
        return self._access.admin_url

    def password_file(self, user: str) -> Path:
        return self._access.passwords.file(user)

    def password(self, user: str) -> str:
        return self._access.passwords.of(user)

    def identity(self, name: str) -> certs.Identity:
        return self._access.authority.identity(name)

    @property
    def ca_file(self) -> Path:
        return self._access.authority.ca_file

    def user_env(self, component: str | None) -> dict[str, str]:
        """The PROFILEMESH_REDIS_* settings of `component`'s user (None: the admin), TLS files included."""
        return self._access.user_env(component)

    def _client_options(self, user: str) -> dict[str, Any]:
        return self._access.client_options(user)

    def client(self, user: str = acl.ADMIN_USER, **kwargs: Any) -> nodes.SyncClusterClient:
        """A cluster client as `user` (the admin unless said): how tests and tools look at the cluster."""
        return self._access.client(user, **kwargs)

    def async_client(self, user: str = acl.ADMIN_USER, **kwargs: Any) -> ClusterClient:
        return self._access.async_client(user, **kwargs)

    def node(self, index: int) -> nodes.NodeClient:
        """The raw client of the node at `index`, as the admin: for tests that run any command on it."""
        return self._admin(index).client

    def _admin(self, index: int) -> Node:
        return self._access.node(self.host(index), self.ports[index])

    # Processes: localdev/valkey.py makes the command lines, localdev/node_processes.py runs them.

    def start(self, timeout_s: float = 60) -> None:
        """Start every node; create the cluster the first time, else reuse its files."""
        self.data_dir = self.data_dir.resolve()
        for index in range(len(self.ports)):
            self.start_node(index)
        marker = self.data_dir / "created"
        if not marker.exists():
            self._wait(lambda: all(self._answers(i) for i in range(len(self.ports))), timeout_s, "nodes to start")
            self._create(timeout_s)
            replace_file(marker, "\n".join(map(str, self.ports)))
        self.wait_ready(timeout_s)
        if self.supervised:
            self._supervisor = Supervisor(
                self._nodes, self.cluster_nodes, self.start_node, self.address, self.node_timeout_ms / 1000
            )
            self._supervisor.start()

    def _create(self, timeout_s: float) -> None:
        if self.shards < valkey.CLI_MIN_PRIMARIES:
            self._create_by_hand(timeout_s)
            return
        addresses = [self.address(i) for i in range(len(self.ports))]
        ca_file = self.ca_file if self.tls else None
        valkey.create_cluster(addresses, self.tls, ca_file, self.password(acl.ADMIN_USER))

    def _create_by_hand(self, timeout_s: float) -> None:
        """What valkey-cli --cluster create does, for the one or two shards it refuses: slots split alike, a
        config epoch each, every node met, then each replica following its primary (node i + shards -> i)."""
        admins = [self._admin(index) for index in range(len(self.ports))]
        try:
            for index, (first, last) in enumerate(valkey.slot_ranges(self.shards)):
                admins[index].command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for index, admin in enumerate(admins):
                admin.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            for admin in admins[1:]:
                admin.command("CLUSTER", "MEET", self.host(0), self.ports[0], self.bus_ports[0])

            def met() -> bool:
                views = [admin.cluster_nodes() for admin in admins]
                return all(len(v) == len(admins) and not any("handshake" in n.flags for n in v) for v in views)

            self._wait(met, timeout_s, "the nodes to meet")
            ids = [str(admin.command("CLUSTER", "MYID")) for admin in admins]
            for index in range(self.shards, len(admins)):
                admins[index].command("CLUSTER", "REPLICATE", ids[index - self.shards])
        finally:
            for admin in admins:
                admin.close()

    def start_node(self, index: int) -> None:
        """Start the node at `index` on its own port and data (the first time, or again)."""
        for taken in (self.ports[index], self.bus_ports[index]):
            if not port_is_free(taken, self.host(index)):
                raise RuntimeError(f"port {taken} is in use: is another cluster (make run?) still running?")
        access = self._access
        config = valkey.write_security_config(self.data_dir, access.passwords, access.authority if self.tls else None)
        spec = NodeSpec(
            self.host(index),
            self.ports[index],
            self.bus_ports[index],
            self.data_dir / str(self.ports[index]),
            self.tls,
            self.node_timeout_ms,
            self.log_to_files,
        )
        private_dir(spec.directory)
        self._nodes.start(index, spec.command(config))

    def stop_node(self, index: int, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        """Stop a node on purpose: the supervisor leaves it down until start_node."""
        self._nodes.stop(index, sig, timeout_s)

    def kill_node(self, index: int) -> None:
        self.stop_node(index, signal.SIGKILL)

    def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.stop()
            self._supervisor = None
        for index in list(self.processes):
            self.stop_node(index)

    # Topology and readiness: localdev/readiness.py.

    def cluster_nodes(self) -> list[NodeLine]:
        """CLUSTER NODES as seen by any running node."""
        for index in self._nodes.running():
            try:
                return self._admin(index).cluster_nodes()
            except StorageError:
                continue
        raise RuntimeError("no cluster node answers")

    def node_lines(self, index: int) -> list[NodeLine]:
        """CLUSTER NODES as the node at `index` sees it (each node has its own view while the topology changes)."""
        return self._admin(index).cluster_nodes()

    def _answers(self, index: int) -> bool:
        return self._admin(index).ping()

    def _ready(self) -> bool:
        return cluster_ready(self._admin(index) for index in list(self.processes))

    def wait_ready(self, timeout_s: float = 60) -> None:
        self._wait(self._ready, timeout_s, "the cluster to be ready")

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_while_running(condition, self._check_running, timeout_s, what)

    def _check_running(self) -> None:
        if self._supervisor is not None:
            return  # a node that exits is started again
        exited = {self.ports[index]: code for index, code in self._nodes.exited().items()}
        if exited:
            raise RuntimeError(f"cluster nodes exited (port: exit code): {exited}; see node.log under {self.data_dir}")


@dataclass
class LocalNode:
    """One standalone node with nothing persisted: for tests of the scripts alone, which need no cluster.

    It listens on a Unix socket only: a third less time per round trip than loopback TCP.
    """

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.data_dir / "node.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(server_binary()),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL)
        node = Node.on_socket(str(self.socket))
        try:
            poll_until(node.ping, timeout_s, f"the node at {self.socket} to start")
        finally:
            node.close()

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None


def default_cluster(data_dir: Path, supervised: bool = False, tls: bool = False) -> LocalCluster:
    """The cluster of `make run` and `python -m localdev.cluster`: on PROFILEMESH_CLUSTER_PORT (7000) and up."""
    base = int(os.environ.get("PROFILEMESH_CLUSTER_PORT", "7000"))
    ports = [base + i for i in range(2 * PRIMARIES)]
    bus_ports = [port + 10000 for port in ports]
    return LocalCluster(data_dir=data_dir, ports=ports, bus_ports=bus_ports, supervised=supervised, tls=tls)


def main() -> None:
    cluster = default_cluster(Path(".cluster"), supervised=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cluster.start()
        print(f"cluster ready at {cluster.url} (nodes {cluster.startup_urls}); Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
