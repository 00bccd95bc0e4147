"""gRPC channels: round robin over every replica of a target, health-checked, with TLS or mTLS from files.

A target names every replica (`ipv4:host:port,host:port`, or a `dns:///` name with several addresses).
The channel watches each one's `grpc.health.v1.Health` (client-side health checking), so a replica that
turned NOT_SERVING on SIGTERM gets no new calls; gRPC's transparent retries replay a call that never
reached the replica it was sent to. Retries of calls that did reach one are the client's (policy.py), so
they follow the ErrorInfo reason, which a service config's retryPolicy can't see.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}})
OPTIONS: list[tuple[str, Any]] = [
    ("grpc.service_config", SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    # A replica that comes back (a restart, a rolling deploy) is connected to within a second, rather than
    # after gRPC's default backoff of up to two minutes, during which the others may be the ones restarting.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# The services' own variables and `make run`'s defaults: where a client finds each service.
TARGETS = {
    "profile": ("PROFILEMESH_PROFILE_TARGET", "dns:///127.0.0.1:50051"),
    "reporting": ("PROFILEMESH_REPORTING_TARGET", "dns:///127.0.0.1:50052"),
}


def target_from_env(service: str, env: dict[str, str] | None = None) -> str:
    variable, default = TARGETS[service]
    return (os.environ if env is None else env).get(variable) or default


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS to the services: the CA that signed them and, for mutual TLS, this client's certificate and key
    (the same PEM files the services use: PROFILEMESH_GRPC_CA_FILE, _CERT_FILE, _KEY_FILE)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Tls | None:
        """From the PROFILEMESH_GRPC_* variables; None (plaintext) when no CA is set."""
        env = dict(os.environ) if env is None else env
        ca = env.get("PROFILEMESH_GRPC_CA_FILE")
        if not ca:
            return None
        return cls(ca, env.get("PROFILEMESH_GRPC_CERT_FILE") or None, env.get("PROFILEMESH_GRPC_KEY_FILE") or None)

    def credentials(self) -> grpc.ChannelCredentials:
        ca = Path(self.ca_file).read_bytes()
        if not self.cert_file:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        if not self.key_file:
            raise ValueError("a client certificate needs its key file too")
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=Path(self.key_file).read_bytes(),
            certificate_chain=Path(self.cert_file).read_bytes(),
        )


def aio_channel(target: str, tls: Tls | None = None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    merged = [*OPTIONS, *options]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=merged)
    return grpc.aio.secure_channel(target, tls.credentials(), options=merged)
