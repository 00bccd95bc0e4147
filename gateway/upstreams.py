"""gRPC channels to the services: round robin over every address of a target, health-checked, with retries.

A target names every replica of a service: `ipv4:host:port,host:port` or a `dns:///` name that
resolves to several addresses. The channel keeps a connection to each and watches each one's
`grpc.health.v1.Health` (client-side health checking, `healthCheckConfig`), so a replica that turned
NOT_SERVING (it got SIGTERM and is draining) gets no new calls while it finishes the ones it has.
Transparent retries (on with `grpc.enable_retries`, the default) replay a call on another replica
when it never reached the one it was sent to, e.g. a replica killed between pick and send.

Every channel the gateway opens is made here (Upstreams): per service one for unary calls (and the health
checks of /readyz) and one for streams.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web

from common.rpc import tls
from common.runtime.config import Settings
from gateway.routes import Route

# Retries are safe only where a call changes nothing: ReportingService is read-only.
# GetProfile counts a read, so it is not retried behind the caller's back.
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                "name": [{"service": "profilemesh.reporting.v1.ReportingService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def channel(target: str, settings: Settings, extra_options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to `target`, with mutual TLS when PROFILEMESH_GRPC_* configure it."""
    return tls.aio_channel(
        target,
        settings,
        options=[
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30000),
            ("grpc.keepalive_timeout_ms", 10000),
            *extra_options,
        ],
    )


def stream_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """Streams get channels of their own, without BDP probing: with it, gRPC grows a stream's receive
    window to megabytes, which a slow SSE client would make the gateway hold for each of its streams.
    At the default 64 KiB window the service's bounded queue takes the back-pressure instead."""
    return channel(target, settings, extra_options=[("grpc.http2.bdp_probe", 0)])


class Upstreams:
    """The gateway's channels to the services (`targets`: service name -> target), and a callable per route on
    the right one, each made once: making one per request costs a few percent of the gateway's CPU."""

    def __init__(self, targets: Mapping[str, str], settings: Settings) -> None:
        self.channels = {service: channel(target, settings) for service, target in targets.items()}
        self.stream_channels = {service: stream_channel(target, settings) for service, target in targets.items()}

    def calls(self, routes: Iterable[Route]) -> dict[str, Any]:
        """grpc path -> the route's callable: on a stream channel for a server-streaming RPC."""
        return {
            route.grpc_path: route.call_on(
                (self.stream_channels if route.method.server_streaming else self.channels)[route.service]
            )
            for route in routes
        }

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in [*self.channels.values(), *self.stream_channels.values()]))


UPSTREAMS = web.AppKey("upstreams", Upstreams)
CALLS = web.AppKey("calls", dict[str, Any])  # Upstreams.calls of the app's routes
