"""Where the command finds each component: the services' own PROFILEMESH_* settings, read the same way."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path

from common.runtime.config import Settings
from common.storage import acl

# Where `make run` keeps the local cluster's admin password: the command's default user there.
LOCAL_ADMIN_PASSWORD = Path(__file__).resolve().parent.parent / ".cluster" / "secrets" / f"{acl.ADMIN_USER}.password"

COMPONENTS = ("profile_svc", "reporting_svc", "aggregator_svc", "gateway")


def _local(listen: str) -> str:
    """A listen address as something to connect to: 0.0.0.0 means this machine."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


def replicas(target: str) -> list[str]:
    """Every address behind a target: one per replica (`ipv4:a:p,b:q`, `dns:///host:port` or host:port)."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return [address for address in target.removeprefix(scheme).split(",") if address]
    address = target.removeprefix("dns:///").removeprefix("dns:")
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError):
        return [address]
    found = sorted({f"{info[4][0]}:{port}" for info in infos})
    return found or [address]


@dataclass(frozen=True)
class Endpoints:
    settings: Settings

    @classmethod
    def from_env(cls) -> Endpoints:
        """The PROFILEMESH_* settings; with no cluster user set, `make run`'s admin user when there is one."""
        settings = Settings.from_env()
        if not settings.redis_username and LOCAL_ADMIN_PASSWORD.exists():
            settings = dataclasses.replace(
                settings, redis_username=acl.ADMIN_USER, redis_password=LOCAL_ADMIN_PASSWORD.read_text().strip()
            )
        return cls(settings)

    def grpc_target(self, component: str) -> str:
        """The gRPC target of a service: its target setting, or its listen address for the aggregator."""
        if component == "profile_svc":
            return self.settings.profile_target
        if component == "reporting_svc":
            return self.settings.reporting_target
        return _local(self.settings.aggregator_listen)

    @property
    def gateway_url(self) -> str:
        return f"http://{_local(self.settings.gateway_listen)}"

    def metrics_url(self, component: str) -> str | None:
        listen = self.settings.metrics_listen(component)
        return None if listen == "off" else f"http://{_local(listen)}/metrics"
