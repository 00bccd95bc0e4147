"""The container image's HEALTHCHECK: `python3 -m common.runtime.probe [component]`, exit 0 when ready.

It needs no extra binary (no curl, no grpc_health_probe): gRPC services answer the standard health
service, the gateway its /readyz. Without an argument the component is the one running as PID 1,
i.e. the console script the container was started with.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.rpc import tls
from common.runtime.config import Settings

TIMEOUT_S = 2.0
COMPONENTS = ("profile", "reporting", "aggregator", "gateway")
PROBE_NAME = "localhost"  # the name a server's certificate must carry for the probe (over mutual TLS)


def _local(listen: str) -> str:
    """The address to reach a listener on from inside its own container."""
    host, _, port = listen.rpartition(":")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{port}"


def running_component(cmdline: Path = Path("/proc/1/cmdline")) -> str:
    """The component of the container's main process, from its console script `profilemesh-<component>`."""
    for argument in cmdline.read_bytes().split(b"\0"):
        name = Path(argument.decode(errors="replace")).name
        if name.removeprefix("profilemesh-") in COMPONENTS:
            return name.removeprefix("profilemesh-")
    raise SystemExit(f"PID 1 is not a profilemesh component: {cmdline.read_bytes()!r}")


def probe(component: str, settings: Settings) -> bool:
    if component == "gateway":
        try:
            with urllib.request.urlopen(f"http://{_local(settings.gateway_listen)}/readyz", timeout=TIMEOUT_S) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False
    listen = getattr(settings, f"{component}_listen")
    # With mutual TLS, the component's own certificate, and the server's checked for the name `localhost`
    # (certificates name it for this probe: README.md, "Deploying"); the address stays the local one.
    options = [("grpc.ssl_target_name_override", PROBE_NAME)] if settings.grpc_ca_file else []
    with tls.sync_channel(_local(listen), settings, options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    component = arguments[0] if arguments else running_component()
    if component not in COMPONENTS:
        raise SystemExit(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
    return 0 if probe(component, Settings.from_env()) else 1


if __name__ == "__main__":
    sys.exit(main())
