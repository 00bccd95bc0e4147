"""`make run`: the local cluster, the three services and the gateway, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from localdev.cluster import default_cluster
from localdev.prometheus import DEFAULT_TARGETS, Prometheus
from localdev.system import SERVICES, System, replica_names, replicas_from_env

# Replica k (from 0) of a service listens on its port + 10 * k: 50051, 50061, ... for profile_svc.
REPLICA_PORT_STEP = 10
REPLICATED = ("profile_svc", "reporting_svc")


def _ports(variable: str, default: int, replicas: int) -> list[int]:
    first = int(os.environ.get(variable, str(default)))
    return [first + REPLICA_PORT_STEP * k for k in range(replicas)]


def _write_client_env(system: System, path: Path) -> None:
    """The settings a client of the secured system needs (file paths, never a secret), to `source`."""
    env = {**system.cluster.user_env(None), **system.grpc_env("localdev")}
    env.update(
        PROFILEMESH_PROFILE_TARGET=f"ipv4:{','.join(f'127.0.0.1:{p}' for p in system.profile_ports)}",
        PROFILEMESH_REPORTING_TARGET=f"ipv4:{','.join(f'127.0.0.1:{p}' for p in system.reporting_ports)}",
    )
    path.write_text("".join(f"export {name}={value}\n" for name, value in env.items()))


def _metrics_port(component: str) -> int:
    variable = f"PROFILEMESH_{component.removesuffix('_svc').upper()}_METRICS_PORT"
    return int(os.environ.get(variable, DEFAULT_TARGETS[component]))


def _system(data_dir: Path, secure: bool, replicas: int) -> System:
    """The supervised cluster (in `data_dir`), the services and the gateway on the ports the environment says."""
    return System(
        grpc_tls=secure,
        cluster=default_cluster(data_dir, supervised=True, tls=secure),
        profile_ports=_ports("PROFILEMESH_PROFILE_PORT", 50051, replicas),
        reporting_ports=_ports("PROFILEMESH_REPORTING_PORT", 50052, replicas),
        aggregator_port=int(os.environ.get("PROFILEMESH_AGGREGATOR_PORT", "50053")),
        gateway_port=int(os.environ.get("PROFILEMESH_GATEWAY_PORT", "8080")),
        # Replica k of a service serves metrics on its component's port + 10 * k too: 9101, 9111, ...
        metrics_ports={
            name: _metrics_port(component) + REPLICA_PORT_STEP * k
            for component in SERVICES
            for k, name in enumerate(replica_names(component, replicas if component in REPLICATED else 1))
        },
    )


def _prometheus(system: System) -> Prometheus | None:
    """Prometheus scraping every component, with PROFILEMESH_PROMETHEUS=1."""
    if os.environ.get("PROFILEMESH_PROMETHEUS") != "1":
        return None
    port = int(os.environ.get("PROFILEMESH_PROMETHEUS_PORT", "9090"))
    return Prometheus(Path(".prometheus"), port, system.metrics_ports)


def _banner(system: System, data_dir: Path, secure: bool, prometheus: Prometheus | None, client_env: Path) -> str:
    """What runs where, how it is secured, and what to try."""
    security = (
        "ACL users, TLS cluster, mutual TLS gRPC"
        if secure
        else f"ACL users (passwords in {data_dir / 'secrets'}/), plaintext"
    )
    metrics = "".join(f"  {name:<14} http://127.0.0.1:{port}/metrics\n" for name, port in system.metrics_ports.items())
    return (
        "\nprofilemesh is running:\n"
        f"  cluster        {system.cluster.url}  (nodes {system.cluster.startup_urls}, data in {data_dir}/)\n"
        f"  security       {security}\n"
        f"  cluster nodes  supervised: a node that exits is started again and rejoins as a replica\n"
        f"  profile_svc    grpc {', '.join(f'127.0.0.1:{port}' for port in system.profile_ports)}\n"
        f"  reporting_svc  grpc {', '.join(f'127.0.0.1:{port}' for port in system.reporting_ports)}\n"
        f"  aggregator_svc grpc health 127.0.0.1:{system.aggregator_port}\n"
        f"  gateway        {system.gateway_url}  (try: curl {system.gateway_url}/reporting/profileStats/3)\n"
        f"Prometheus metrics:\n{metrics}"
        + (
            f"  prometheus     {prometheus.url}  (scrapes them all; data in .prometheus/)\n"
            if prometheus
            else "  (PROFILEMESH_PROMETHEUS=1 make run also starts Prometheus on them)\n"
        )
        + (
            f"Try: source {client_env}; .venv/bin/profilemesh status\n"
            if secure
            else "Try: .venv/bin/profilemesh status, .venv/bin/profilemesh watch\n"
        )
        + "Ctrl-C stops everything.\n"
    )


def _serve(system: System, data_dir: Path, secure: bool, prometheus: Prometheus | None) -> None:
    """Start everything, say where it is, and return once a service exits."""
    system.start(timeout_s=120)
    if prometheus is not None:
        prometheus.start()
    client_env = data_dir.resolve() / "client.env"
    if secure:
        _write_client_env(system, client_env)
    print(_banner(system, data_dir, secure, prometheus, client_env), flush=True)
    while all(process.poll() is None for process in system.processes.values()):
        time.sleep(0.5)
    print("a service exited; stopping everything", file=sys.stderr)


def main() -> None:
    replicas = replicas_from_env()
    # Secured: ACL users over a TLS cluster (Debian's redis-server), mutual TLS between every gRPC
    # client and server, certificates made for the run. Its data lives apart from the plaintext cluster's.
    secure = os.environ.get("PROFILEMESH_SECURE") == "1"
    data_dir = Path(".cluster-secure" if secure else ".cluster")
    system = _system(data_dir, secure, replicas)
    prometheus = _prometheus(system)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C, even when started from a shell that made background jobs ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _serve(system, data_dir, secure, prometheus)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping...", flush=True)
        if prometheus is not None:
            prometheus.stop()
        system.stop()


if __name__ == "__main__":
    main()
