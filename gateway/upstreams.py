"""gRPC channels to the services: round robin over every address of a target, health-checked, with retries.

A target names every replica of a service: `ipv4:host:port,host:port` or a `dns:///` name that
resolves to several addresses. The channel keeps a connection to each and watches each one's
`grpc.health.v1.Health` (client-side health checking, `healthCheckConfig`), so a replica that turned
NOT_SERVING (it got SIGTERM and is draining) gets no new calls while it finishes the ones it has.
Transparent retries (on with `grpc.enable_retries`, the default) replay a call on another replica
when it never reached the one it was sent to, e.g. a replica killed between pick and send.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc

from common.rpc import tls
from common.runtime.config import Settings

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
