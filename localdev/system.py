"""The whole system as child processes: a local cluster, the three services and the gateway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from localdev import processes
from localdev.cluster import LocalCluster
from localdev.ports import free_ports

SERVICES = ("profile_svc", "reporting_svc", "aggregator_svc", "gateway")


@dataclass
class System:
    cluster: LocalCluster
    profile_port: int
    reporting_port: int
    aggregator_port: int
    gateway_port: int
    log_dir: Path | None = None  # None: children write to this terminal
    settings: dict[str, str] = field(default_factory=dict)  # extra PROFILEMESH_* variables
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def grpc_ports(self) -> dict[str, int]:
        return {"profile_svc": self.profile_port, "reporting_svc": self.reporting_port, "aggregator_svc": self.aggregator_port}

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PROFILEMESH_REDIS_URL=self.cluster.url,
            PROFILEMESH_PROFILE_LISTEN=f"127.0.0.1:{self.profile_port}",
            PROFILEMESH_REPORTING_LISTEN=f"127.0.0.1:{self.reporting_port}",
            PROFILEMESH_AGGREGATOR_LISTEN=f"127.0.0.1:{self.aggregator_port}",
            PROFILEMESH_GATEWAY_LISTEN=f"127.0.0.1:{self.gateway_port}",
            PROFILEMESH_PROFILE_TARGET=f"dns:///127.0.0.1:{self.profile_port}",
            PROFILEMESH_REPORTING_TARGET=f"dns:///127.0.0.1:{self.reporting_port}",
        )
        env.update(self.settings)
        env.update(overrides)
        return env

    def start_process(self, name: str, module: str, **env: str) -> subprocess.Popen:
        """Start `python -m module` as `name`; logs go to log_dir/name.log when there is one."""
        output: IO | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", module], env=self.env(**env), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if output is not None:
            output.close()
        self.processes[name] = process
        return process

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        process = self.processes.pop(name, None)
        return processes.stop(process, sig, timeout_s) if process is not None else None

    def start(self, timeout_s: float = 60) -> None:
        self.cluster.start(timeout_s)
        for name in SERVICES:
            self.start_process(name, name)
        self.wait_healthy(timeout_s)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop_process(name)
        self.cluster.stop()

    def grpc_status(self, port: int) -> str:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                return error.code().name

    def gateway_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.gateway_url}/readyz", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            exited = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
            if exited:
                raise RuntimeError(f"exited before becoming healthy: {exited}")
            if all(self.grpc_status(port) == "SERVING" for port in self.grpc_ports.values()) and self.gateway_ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the system was not healthy after {timeout_s:.0f}s")
            time.sleep(0.2)


def on_free_ports(directory: Path, settings: dict[str, str] | None = None, node_timeout_ms: int = 2000) -> System:
    """A whole system (not started) on free ports, its data and logs under `directory`: for tests and benchmarks."""
    ports = free_ports(16)
    cluster = LocalCluster(
        data_dir=directory / "cluster", ports=ports[:6], bus_ports=ports[6:12], node_timeout_ms=node_timeout_ms
    )
    return System(
        cluster=cluster,
        profile_port=ports[12],
        reporting_port=ports[13],
        aggregator_port=ports[14],
        gateway_port=ports[15],
        log_dir=directory / "logs",
        settings=dict(settings or {}),
    )
