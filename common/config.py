"""Settings from environment variables (twelve-factor), each with a local default."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


# none: the primary applied it. local: and fsynced it to its append-only file (WAITAOF 1 0).
# replica: and at least one replica has it (WAIT 1), so it survives the loss of the primary.
DURABILITY_LEVELS = ("none", "local", "replica")


@dataclass(frozen=True)
class Settings:
    """Every knob of every service; each service reads the ones it needs."""

    redis_url: str = "redis://127.0.0.1:7000"
    partitions: int = 16
    redis_timeout_ms: int = 1000
    redis_max_concurrency: int = 64
    durability: str = "replica"
    durability_timeout_ms: int = 1000
    max_in_flight: int = 256
    profile_listen: str = "0.0.0.0:50051"
    reporting_listen: str = "0.0.0.0:50052"
    aggregator_listen: str = "0.0.0.0:50053"
    gateway_listen: str = "0.0.0.0:8080"
    # Where each component serves Prometheus metrics (/metrics over HTTP); "off" serves none.
    profile_metrics_listen: str = "0.0.0.0:9101"
    reporting_metrics_listen: str = "0.0.0.0:9102"
    aggregator_metrics_listen: str = "0.0.0.0:9103"
    gateway_metrics_listen: str = "0.0.0.0:9104"
    profile_target: str = "dns:///127.0.0.1:50051"
    reporting_target: str = "dns:///127.0.0.1:50052"
    deadline_ms: int = 2000
    shutdown_grace_s: int = 10
    drain_ms: int = 1000
    aggregator_group: str = "aggregator"
    aggregator_consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    aggregator_batch: int = 500
    aggregator_claim_idle_ms: int = 10000
    aggregator_maintenance_s: int = 5
    aggregator_linger_ms: int = 10
    # Streams (WatchProfileEvents, WatchTopProfiles and their SSE routes); see common/streams.py.
    events_retention_s: int = 600
    max_streams: int = 128
    stream_queue: int = 2000
    stream_heartbeat_s: int = 15
    stream_idle_s: int = 600
    stream_max_s: int = 3600
    watch_interval_ms: int = 250
    log_level: str = "INFO"
    # The gateway's public edge; see gateway/edge.py.
    http_max_url_bytes: int = 16384
    http_max_header_bytes: int = 8190
    http_max_headers: int = 100
    http_max_body_bytes: int = 65536
    http_idle_timeout_s: int = 75
    http_body_timeout_s: int = 10
    rate_limit_per_s: int = 0
    rate_limit_burst: int = 50

    @classmethod
    def from_env(cls) -> Settings:
        defaults = cls()
        settings = cls(
            redis_url=_env_str("PROFILEMESH_REDIS_URL", defaults.redis_url),
            partitions=_env_int("PROFILEMESH_PARTITIONS", defaults.partitions),
            redis_timeout_ms=_env_int("PROFILEMESH_REDIS_TIMEOUT_MS", defaults.redis_timeout_ms),
            redis_max_concurrency=_env_int("PROFILEMESH_REDIS_MAX_CONCURRENCY", defaults.redis_max_concurrency),
            durability=_env_str("PROFILEMESH_DURABILITY", defaults.durability),
            durability_timeout_ms=_env_int("PROFILEMESH_DURABILITY_TIMEOUT_MS", defaults.durability_timeout_ms),
            max_in_flight=_env_int("PROFILEMESH_MAX_IN_FLIGHT", defaults.max_in_flight),
            profile_listen=_env_str("PROFILEMESH_PROFILE_LISTEN", defaults.profile_listen),
            reporting_listen=_env_str("PROFILEMESH_REPORTING_LISTEN", defaults.reporting_listen),
            aggregator_listen=_env_str("PROFILEMESH_AGGREGATOR_LISTEN", defaults.aggregator_listen),
            gateway_listen=_env_str("PROFILEMESH_GATEWAY_LISTEN", defaults.gateway_listen),
            profile_metrics_listen=_env_str("PROFILEMESH_PROFILE_METRICS_LISTEN", defaults.profile_metrics_listen),
            reporting_metrics_listen=_env_str(
                "PROFILEMESH_REPORTING_METRICS_LISTEN", defaults.reporting_metrics_listen
            ),
            aggregator_metrics_listen=_env_str(
                "PROFILEMESH_AGGREGATOR_METRICS_LISTEN", defaults.aggregator_metrics_listen
            ),
            gateway_metrics_listen=_env_str("PROFILEMESH_GATEWAY_METRICS_LISTEN", defaults.gateway_metrics_listen),
            profile_target=_env_str("PROFILEMESH_PROFILE_TARGET", defaults.profile_target),
            reporting_target=_env_str("PROFILEMESH_REPORTING_TARGET", defaults.reporting_target),
            deadline_ms=_env_int("PROFILEMESH_DEADLINE_MS", defaults.deadline_ms),
            shutdown_grace_s=_env_int("PROFILEMESH_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s),
            drain_ms=_env_int("PROFILEMESH_DRAIN_MS", defaults.drain_ms),
            aggregator_group=_env_str("PROFILEMESH_AGGREGATOR_GROUP", defaults.aggregator_group),
            aggregator_consumer=_env_str("PROFILEMESH_AGGREGATOR_CONSUMER", defaults.aggregator_consumer),
            aggregator_batch=_env_int("PROFILEMESH_AGGREGATOR_BATCH", defaults.aggregator_batch),
            aggregator_claim_idle_ms=_env_int(
                "PROFILEMESH_AGGREGATOR_CLAIM_IDLE_MS", defaults.aggregator_claim_idle_ms
            ),
            aggregator_maintenance_s=_env_int(
                "PROFILEMESH_AGGREGATOR_MAINTENANCE_S", defaults.aggregator_maintenance_s
            ),
            aggregator_linger_ms=_env_int("PROFILEMESH_AGGREGATOR_LINGER_MS", defaults.aggregator_linger_ms),
            events_retention_s=_env_int("PROFILEMESH_EVENTS_RETENTION_S", defaults.events_retention_s),
            max_streams=_env_int("PROFILEMESH_MAX_STREAMS", defaults.max_streams),
            stream_queue=_env_int("PROFILEMESH_STREAM_QUEUE", defaults.stream_queue),
            stream_heartbeat_s=_env_int("PROFILEMESH_STREAM_HEARTBEAT_S", defaults.stream_heartbeat_s),
            stream_idle_s=_env_int("PROFILEMESH_STREAM_IDLE_S", defaults.stream_idle_s),
            stream_max_s=_env_int("PROFILEMESH_STREAM_MAX_S", defaults.stream_max_s),
            watch_interval_ms=_env_int("PROFILEMESH_WATCH_INTERVAL_MS", defaults.watch_interval_ms),
            log_level=_env_str("PROFILEMESH_LOG_LEVEL", defaults.log_level),
            http_max_url_bytes=_env_int("PROFILEMESH_HTTP_MAX_URL_BYTES", defaults.http_max_url_bytes),
            http_max_header_bytes=_env_int("PROFILEMESH_HTTP_MAX_HEADER_BYTES", defaults.http_max_header_bytes),
            http_max_headers=_env_int("PROFILEMESH_HTTP_MAX_HEADERS", defaults.http_max_headers),
            http_max_body_bytes=_env_int("PROFILEMESH_HTTP_MAX_BODY_BYTES", defaults.http_max_body_bytes),
            http_idle_timeout_s=_env_int("PROFILEMESH_HTTP_IDLE_TIMEOUT_S", defaults.http_idle_timeout_s),
            http_body_timeout_s=_env_int("PROFILEMESH_HTTP_BODY_TIMEOUT_S", defaults.http_body_timeout_s),
            rate_limit_per_s=_env_int("PROFILEMESH_RATE_LIMIT_PER_S", defaults.rate_limit_per_s),
            rate_limit_burst=_env_int("PROFILEMESH_RATE_LIMIT_BURST", defaults.rate_limit_burst),
        )
        if settings.durability not in DURABILITY_LEVELS:
            raise SystemExit(
                f"PROFILEMESH_DURABILITY must be one of {', '.join(DURABILITY_LEVELS)}, got {settings.durability!r}"
            )
        if not 1 <= settings.partitions <= 1024:
            raise SystemExit(f"PROFILEMESH_PARTITIONS must be 1..1024, got {settings.partitions}")
        for name in (
            "events_retention_s",
            "max_streams",
            "stream_queue",
            "stream_heartbeat_s",
            "stream_idle_s",
            "stream_max_s",
            "watch_interval_ms",
            "http_max_url_bytes",
            "http_max_header_bytes",
            "http_max_headers",
            "http_max_body_bytes",
            "http_idle_timeout_s",
            "http_body_timeout_s",
            "rate_limit_burst",
        ):
            if getattr(settings, name) < 1:
                raise SystemExit(f"PROFILEMESH_{name.upper()} must be at least 1, got {getattr(settings, name)}")
        return settings

    def metrics_listen(self, component: str) -> str:
        """The metrics address of `component` (profile_svc, reporting_svc, aggregator_svc or gateway)."""
        return getattr(self, f"{component.removesuffix('_svc')}_metrics_listen")
