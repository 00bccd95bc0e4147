"""The whole system as child processes: a local cluster, the three services and the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.rpc import tls
from common.runtime.config import Settings
from common.storage import acl
from localdev import certs, processes
from localdev.cluster import LocalCluster
from localdev.ports import free_ports
from localdev.waiting import answers_ok, poll_until
from profilemesh_cli import migrate

# Every component; each serves Prometheus metrics on a port of its own.
SERVICES = ("profile_svc", "reporting_svc", "aggregator_svc", "gateway")

# The services with Watch RPCs, and the setting naming whom they trust to say which client a stream is for.
STREAMING = ("profile_svc", "reporting_svc")
TRUSTED_PROXIES = "PROFILEMESH_TRUSTED_PROXIES"

# How many replicas of profile_svc and of reporting_svc `make run` starts.
REPLICAS_VARIABLE = "PROFILEMESH_REPLICAS"


# With mutual TLS, who may call what (common/rpc/tls.py AllowedClients; a method no rule covers is refused):
# only the gateway and localdev (the profilemesh command, tests) may change profiles, or read them and the
# statistics; health checks are open to any certificate the mesh's CA signed; reflection is localdev's.
PROFILE_CHANGES_ALLOWED = ";".join(
    f"/profilemesh.profile.v1.ProfileService/{method}=gateway,localdev"
    for method in ("CreateProfile", "UpdateProfile", "DeleteProfile", "BatchWriteProfiles")
)
MESH_ALLOWED_CLIENTS = ";".join(
    (
        PROFILE_CHANGES_ALLOWED,
        "/profilemesh.profile.v1.ProfileService/=gateway,localdev",
        "/profilemesh.reporting.v1.ReportingService/=gateway,localdev",
        "/grpc.health.v1.Health/=*",
        "/grpc.reflection.=localdev",
    )
)


def replicas_from_env() -> int:
    raw = os.environ.get(REPLICAS_VARIABLE) or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise SystemExit(f"{REPLICAS_VARIABLE} must be a whole number from 1 to 16, got {raw!r}")
    return int(raw)


def _target(host: str, ports: list[int]) -> str:
    """One gRPC target for every replica: the gateway balances over its addresses."""
    return "ipv4:" + ",".join(f"{host}:{port}" for port in ports)


@dataclass
class System:
    """profile_svc and reporting_svc run one process per port in their list: `profile_svc`,
    `profile_svc-2`, ...; the gateway reaches all of them through one target."""

    cluster: LocalCluster
    profile_ports: list[int]
    reporting_ports: list[int]
    aggregator_port: int
    gateway_port: int
    log_dir: Path | None = None  # None: children write to this terminal
    metrics_ports: dict[str, int] = field(default_factory=dict)  # process name -> its /metrics port
    settings: dict[str, str] = field(default_factory=dict)  # extra PROFILEMESH_* variables
    # Mutual TLS between every gRPC client and server, with certificates the cluster's CA signs.
    grpc_tls: bool = False
    # The address every service listens on and is reached at (tests/jepsen: one of a namespace's own).
    host: str = "127.0.0.1"
    # A process name -> the group id it runs as: a firewall rule can match its packets (`meta skgid`),
    # which cuts one replica off from a cluster node while others still reach it (tests/jepsen).
    groups: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def profile_port(self) -> int:
        return self.profile_ports[0]

    @property
    def reporting_port(self) -> int:
        return self.reporting_ports[0]

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def grpc_ports(self) -> dict[str, int]:
        """Every gRPC server by process name."""
        ports = {_replica_name("profile_svc", i): port for i, port in enumerate(self.profile_ports)}
        ports.update({_replica_name("reporting_svc", i): port for i, port in enumerate(self.reporting_ports)})
        ports["aggregator_svc"] = self.aggregator_port
        return ports

    @property
    def mesh_dir(self) -> Path:
        """The gRPC mesh's CA and certificates: a CA of their own, apart from the cluster's (its tls/)."""
        return self.cluster.data_dir / "mesh"

    @property
    def mesh_ca_file(self) -> Path:
        return certs.make_ca(self.mesh_dir, "profilemesh local mesh CA").cert

    def mesh_identity(self, name: str) -> certs.Identity:
        """A gRPC certificate for `name`, signed by the mesh's CA (made on first use)."""
        return certs.issue(certs.make_ca(self.mesh_dir, "profilemesh local mesh CA"), self.mesh_dir, name)

    def grpc_env(self, name: str) -> dict[str, str]:
        """The PROFILEMESH_GRPC_* settings of identity `name` (empty without gRPC TLS); every server checks
        each call's client against MESH_ALLOWED_CLIENTS."""
        if not self.grpc_tls:
            return {}
        identity = self.mesh_identity(name)
        env = {
            "PROFILEMESH_GRPC_CERT_FILE": str(identity.cert),
            "PROFILEMESH_GRPC_KEY_FILE": str(identity.key),
            "PROFILEMESH_GRPC_CA_FILE": str(self.mesh_ca_file),
        }
        if name in SERVICES and name != "gateway":
            env["PROFILEMESH_GRPC_ALLOWED_CLIENTS"] = MESH_ALLOWED_CLIENTS
        return env

    def client_settings(self, component: str | None = None) -> Settings:
        """Settings for a client of this system: `component`'s cluster user (None: the admin), and the
        gRPC certificate of `localdev` (health checks, tests, the profilemesh command)."""
        return Settings.from_env(self.client_env(component))

    def client_env(self, component: str | None = None) -> dict[str, str]:
        """The environment of a client process (the profilemesh command) as `component`'s user or the admin."""
        return self.env(**self.cluster.user_env(component), **self.grpc_env("localdev"))

    def grpc_channel(self, port: int) -> grpc.Channel:
        return tls.sync_channel(f"{self.host}:{port}", self._client)

    def grpc_aio_channel(self, target: str, options: list[tuple[str, object]] | None = None) -> grpc.aio.Channel:
        """A channel to `target` (host:port) as localdev: plaintext, or mutual TLS with its certificate."""
        return tls.aio_channel(target, self._client, options or [])

    @property
    def _client(self) -> Settings:
        cached = self.__dict__.get("_client_settings")
        if cached is None:
            cached = self.__dict__["_client_settings"] = self.client_settings()
        return cached

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PROFILEMESH_REDIS_URL=self.cluster.url,
            PROFILEMESH_PROFILE_LISTEN=f"{self.host}:{self.profile_port}",
            PROFILEMESH_REPORTING_LISTEN=f"{self.host}:{self.reporting_port}",
            PROFILEMESH_AGGREGATOR_LISTEN=f"{self.host}:{self.aggregator_port}",
            PROFILEMESH_GATEWAY_LISTEN=f"{self.host}:{self.gateway_port}",
            PROFILEMESH_PROFILE_TARGET=_target(self.host, self.profile_ports),
            PROFILEMESH_REPORTING_TARGET=_target(self.host, self.reporting_ports),
        )
        for name in SERVICES:
            if name in self.metrics_ports:
                env[_metrics_variable(name)] = f"{self.host}:{self.metrics_ports[name]}"
        env.update(self.settings)
        env.update(overrides)
        return env

    def start_process(self, name: str, module: str, **env: str) -> subprocess.Popen[bytes]:
        """Start `python -m module` as `name`; logs go to log_dir/name.log when there is one.

        A further replica of a service (a name of its own) serves metrics on a port of its own: the one
        metrics_ports gives for its name, else a free one, recorded there so that Prometheus scrapes it.
        """
        if name != module and module in SERVICES and self.metrics_ports:
            port = self.metrics_ports.get(name) or free_ports(1)[0]
            self.metrics_ports[name] = port
            env.setdefault(_metrics_variable(module), f"{self.host}:{port}")
        # Each component as its own cluster user; the gateway has none.
        identity = {**(self.cluster.user_env(module) if module in acl.USERS else {}), **self.grpc_env(module)}
        if module in STREAMING and TRUSTED_PROXIES not in self.settings:
            # The gateway (on the services' host) names the HTTP client of each stream: its share is that client's.
            identity[TRUSTED_PROXIES] = self.host
        env = {**identity, **env}
        with contextlib.ExitStack() as files:  # the child keeps its own copy of its log file
            output: IO[bytes] | None = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                output = files.enter_context(open(self.log_dir / f"{name}.log", "ab"))
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env=self.env(**env),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                group=self.groups.get(name),
            )
        self.processes[name] = process
        return process

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        process = self.processes.pop(name, None)
        return processes.stop(process, sig, timeout_s) if process is not None else None

    def start_replica(self, service: str, index: int) -> subprocess.Popen[bytes]:
        """Start (again) replica `index` of profile_svc or reporting_svc on its own port."""
        ports = {"profile_svc": self.profile_ports, "reporting_svc": self.reporting_ports}[service]
        variable = {"profile_svc": "PROFILEMESH_PROFILE_LISTEN", "reporting_svc": "PROFILEMESH_REPORTING_LISTEN"}[
            service
        ]
        return self.start_process(_replica_name(service, index), service, **{variable: f"{self.host}:{ports[index]}"})

    def migrate(self) -> list[migrate.Change]:
        """`profilemesh cluster migrate` as the cluster's admin: the functions the services call, loaded before
        any of them starts (they may not load code, and refuse to start without it)."""
        changes = asyncio.run(migrate.migrate(self.client_settings()))
        if not changes or any(change.outcome == migrate.FAILED for change in changes):
            raise RuntimeError(f"profilemesh cluster migrate failed:\n{migrate.render(changes)}")
        # On stderr: stdout is what localdev.serve answers its caller on (one JSON line), and what tests read.
        print(f"profilemesh cluster migrate:\n{migrate.render(changes)}", file=sys.stderr, flush=True)
        return changes

    def start(self, timeout_s: float = 60) -> None:
        self.cluster.start(timeout_s)
        self.migrate()
        self.start_services(timeout_s)

    def start_services(self, timeout_s: float = 60) -> None:
        """Every component on the running cluster, once healthy."""
        for index in range(len(self.profile_ports)):
            self.start_replica("profile_svc", index)
        for index in range(len(self.reporting_ports)):
            self.start_replica("reporting_svc", index)
        for name in ("aggregator_svc", "gateway"):
            self.start_process(name, name)
        self.wait_healthy(timeout_s)

    def stop(self) -> None:
        self.stop_services()
        self.cluster.stop()

    def stop_services(self) -> None:
        """Every process the system started, the cluster left running (a resize's window)."""
        for name in reversed(list(self.processes)):
            self.stop_process(name)

    def metrics_url(self, component: str) -> str:
        return f"http://{self.host}:{self.metrics_ports[component]}/metrics"

    def grpc_status(self, port: int) -> str:
        with self.grpc_channel(port) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            except grpc.RpcError as error:
                return error.code().name

    def gateway_ready(self) -> bool:
        return answers_ok(f"{self.gateway_url}/readyz", timeout_s=2)

    def wait_healthy(self, timeout_s: float = 60) -> None:
        poll_until(self._running_and_healthy, timeout_s, "the system to be healthy", interval_s=0.2)

    def _running_and_healthy(self) -> bool:
        exited = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if exited:
            raise RuntimeError(f"exited before becoming healthy: {exited}")
        return all(self.grpc_status(port) == "SERVING" for port in self.grpc_ports.values()) and self.gateway_ready()


def _replica_name(service: str, index: int) -> str:
    return service if index == 0 else f"{service}-{index + 1}"


def replica_names(service: str, replicas: int) -> list[str]:
    """The process names of a service's replicas: `profile_svc`, `profile_svc-2`, ..."""
    return [_replica_name(service, index) for index in range(replicas)]


def _metrics_variable(component: str) -> str:
    return f"PROFILEMESH_{component.removesuffix('_svc').upper()}_METRICS_LISTEN"


def on_free_ports(
    directory: Path,
    settings: dict[str, str] | None = None,
    node_timeout_ms: int = 2000,
    replicas: int = 1,
    supervised: bool = False,
    secure: bool = False,
    shards: int = 3,
) -> System:
    """A whole system (not started) on free ports, its data and logs under `directory`: for tests and benchmarks.

    The cluster has `shards` primaries and a replica of each (bench/scale.py runs 1, 2 and 3)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    nodes = 2 * shards
    ports = free_ports(2 * nodes + 2 + 2 * replicas + len(SERVICES))  # the last ones serve each component's metrics
    first = 2 * nodes + 2  # the services' ports, after the nodes', their bus ports, the aggregator's and gateway's
    cluster = LocalCluster(
        data_dir=directory / "cluster",
        ports=ports[:nodes],
        bus_ports=ports[nodes : 2 * nodes],
        node_timeout_ms=node_timeout_ms,
        supervised=supervised,
        tls=secure,
    )
    return System(
        cluster=cluster,
        profile_ports=ports[first : first + replicas],
        reporting_ports=ports[first + replicas : first + 2 * replicas],
        aggregator_port=ports[2 * nodes],
        gateway_port=ports[2 * nodes + 1],
        log_dir=directory / "logs",
        metrics_ports=dict(zip(SERVICES, ports[first + 2 * replicas :], strict=True)),
        settings=dict(settings or {}),
        grpc_tls=secure,
    )
