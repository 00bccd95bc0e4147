"""Settings from environment variables (twelve-factor), each declared once with its local default.

A setting is one line of `Settings`: its name (the variable is PROFILEMESH_ and the name in capitals),
its type, its default, its limits and the sentence the README's configuration table shows
(tests/unit/test_config.py keeps that table equal to `markdown_table()`). Limits are checked whenever a
`Settings` is made, from the environment or in code; a bad value raises ConfigError naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from common.errors import ConfigError
from common.rpc.clients import parse_networks

PREFIX = "PROFILEMESH_"
T = TypeVar("T")


def setting(
    default: T,
    doc: str,
    *,
    choices: tuple[T, ...] = (),
    minimum: int | None = None,
    maximum: int | None = None,
    secret: bool = False,
    shown: str | None = None,
    factory: Callable[[], T] | None = None,
) -> T:
    """Declare a setting: its default, the README's sentence for it, and the values it may take.

    `shown` is the default as the README gives it, where the value itself depends on the machine
    (then `factory` computes it). A `secret` is never echoed: not in repr(), not in an error message.
    """
    metadata = {
        "doc": doc,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "secret": secret,
        "shown": shown if shown is not None else f"`{default}`",
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


class Durability(StrEnum):
    """When a profile change is acknowledged."""

    NONE = "none"  # the primary applied it
    LOCAL = "local"  # and fsynced it to its append-only file (WAITAOF 1 0)
    REPLICA = "replica"  # and at least one replica has it (WAIT 1), so it survives the loss of the primary


class ReadCheck(StrEnum):
    """Whether a read confirms its primary is still the shard's before it answers."""

    NONE = "none"  # a read answers what its primary has
    # and that primary confirms a replica still follows it (WAIT 1 after the read), so a paused or
    # partitioned old primary can't answer with stale or lost data
    REPLICA = "replica"


DURABILITY_LEVELS = tuple(Durability)
READ_CHECKS = tuple(ReadCheck)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")


def _consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """Every knob of every service; each service reads the ones it needs."""

    redis_url: str = setting(
        "redis://127.0.0.1:7000",
        "any cluster node; `rediss://host:port` for TLS (MemoryDB: the cluster endpoint)",
        secret=True,
        shown="`redis://127.0.0.1:7000`",
    )
    partitions: int = setting(
        16,
        "partition count, recorded on first start; changed only by `profilemesh cluster resize`",
        minimum=1,
        maximum=4096,
    )
    redis_timeout_ms: int = setting(1000, "connect and socket timeout of cluster commands", minimum=1)
    redis_max_concurrency: int = setting(64, "cluster commands in flight per process", minimum=1)
    durability: Durability = setting(
        Durability.REPLICA,
        "`none`, `local` or `replica`: when a profile operation is acknowledged (above)",
        choices=DURABILITY_LEVELS,
    )
    durability_timeout_ms: int = setting(1000, "how long to wait for that before answering UNAVAILABLE", minimum=0)
    read_check: ReadCheck = setting(
        ReadCheck.NONE,
        "`none` or `replica`: whether a read waits for a replica to confirm it still follows the primary (above)",
        choices=READ_CHECKS,
    )
    max_in_flight: int = setting(
        256, "calls (requests, in the gateway) in flight before new ones are refused", minimum=1
    )
    drain_ms: int = setting(
        1000, "how long a server stays up, NOT_SERVING, after SIGTERM before it stops accepting calls", minimum=0
    )
    profile_listen: str = setting("0.0.0.0:50051", "profile_svc's gRPC address")
    reporting_listen: str = setting("0.0.0.0:50052", "reporting_svc's gRPC address")
    aggregator_listen: str = setting("0.0.0.0:50053", "the aggregator's gRPC health address")
    gateway_listen: str = setting("0.0.0.0:8080", "the gateway's HTTP address")
    profile_target: str = setting(
        "dns:///127.0.0.1:50051",
        "where the gateway finds profile_svc: every replica, as `ipv4:a:p,b:q` or a DNS name with several addresses",
    )
    reporting_target: str = setting("dns:///127.0.0.1:50052", "where the gateway finds reporting_svc, likewise")
    deadline_ms: int = setting(2000, "deadline of every gateway call", minimum=1)
    gateway_batch: str = setting(
        "on",
        "`on`: concurrent `GET /profile/{user}` share BatchGetProfiles calls and concurrent POST/PATCH/DELETE"
        " share BatchWriteProfiles calls (no added wait when idle); `off`: one call each, for A/B measurements",
        choices=("on", "off"),
    )
    shutdown_grace_s: int = setting(10, "how long in-flight calls may finish after SIGTERM", minimum=0)
    aggregator_group: str = setting("aggregator", "the consumer group")
    aggregator_consumer: str = setting(
        "", "this replica's consumer name", factory=_consumer_name, shown="`<hostname>-<pid>`"
    )
    aggregator_batch: int = setting(
        250,
        "entries per read and per apply script; at most 250, which bounds an apply script's time (apply_events.lua"
        " enforces the same maximum)",
        minimum=1,
        maximum=250,
    )
    aggregator_claim_idle_ms: int = setting(
        10000, "how long an entry may stay pending before another replica reclaims it", minimum=1
    )
    aggregator_maintenance_s: int = setting(
        5, "how often the partitions with recent events are reclaimed, trimmed and recounted", minimum=1
    )
    aggregator_quiet_check_s: int = setting(
        60,
        "how often a partition without recent events is taken, reclaimed, trimmed and recounted anyway (a slice"
        " of them each maintenance interval): bounds what a lost wake-up can delay",
        minimum=1,
    )
    aggregator_linger_ms: int = setting(
        25,
        "after a batch smaller than a full one, how long a partition's events gather before the next read"
        " (less CPU per event, that much more lag); partitions wake together, on multiples of it",
        minimum=0,
    )
    aggregator_reindex_s: int = setting(
        600,
        "how often each partition's users, and each top list bucket's, are noted again for the top list's index:"
        " bounds how long a failover's lost copies can leave a top list wrong",
        minimum=1,
    )
    # Streams (WatchProfileEvents, WatchTopProfiles and their SSE routes); see common/rpc/streams.py.
    events_retention_s: int = setting(
        600, "how long acknowledged events stay in the streams, so WatchProfileEvents subscribers can resume", minimum=1
    )
    max_streams: int = setting(
        128, "streams (Watch RPCs, SSE in the gateway) open per process before new ones are refused", minimum=1
    )
    stream_client_share_percent: int = setting(
        25,
        "the share of `PROFILEMESH_MAX_STREAMS` one client address may hold (at least 1); beyond it 429"
        " (RESOURCE_EXHAUSTED `TOO_MANY_STREAMS_FROM_CLIENT`)",
        minimum=1,
        maximum=100,
    )
    trusted_proxies: str = setting(
        "",
        "addresses or CIDR blocks (comma-separated) of proxies trusted to name the client: their right-most"
        " untrusted X-Forwarded-For entry (at a service: the gateway's `x-forwarded-for` metadata) is the client;"
        " empty: the peer is",
        shown="none",
    )
    stream_queue: int = setting(
        2000, "events one subscriber may have queued before it reads from the stream instead", minimum=1
    )
    stream_quiet_check_s: int = setting(
        10,
        "while anyone watches profile events, how often profile_svc reads every partition's stream anyway, woken"
        " or not: bounds what a lost wake-up can delay",
        minimum=1,
    )
    stream_heartbeat_s: int = setting(
        15, "silence after which a stream sends a heartbeat (SSE: a keepalive comment)", minimum=1
    )
    stream_idle_s: int = setting(600, "a stream with no event (or a client reading nothing) this long ends", minimum=1)
    stream_max_s: int = setting(3600, "the longest a stream stays open", minimum=1)
    watch_interval_ms: int = setting(250, "WatchTopProfiles sends at most one message per interval", minimum=1)
    reporting_cache_ms: int = setting(
        250,
        "GetTopProfiles and GetOperationTotals calls (and WatchTopProfiles) within this of a fan-out share its answer;"
        " 0: each call its own",
        minimum=0,
    )
    # The gateway's public edge; see gateway/edge.py.
    http_max_url_bytes: int = setting(
        16384,
        "the gateway's longest request line (method, URL, version); room for 100 `users=` of 128 characters",
        minimum=256,
    )
    http_max_header_bytes: int = setting(8190, "the longest header (name and value)", minimum=256)
    http_max_headers: int = setting(100, "the most headers a request may have", minimum=8)
    http_max_body_bytes: int = setting(65536, "the largest request body (413 beyond)", minimum=1)
    http_idle_timeout_s: int = setting(
        75,
        "a connection without a whole request's headers this long after it opened or after its last answer is closed",
        minimum=1,
    )
    http_body_timeout_s: int = setting(10, "a request body must arrive within this after its headers (408)", minimum=1)
    rate_limit_per_s: int = setting(
        0, "requests a second per client address at the gateway (429 with `Retry-After` beyond); 0: off", minimum=0
    )
    rate_limit_burst: int = setting(50, "requests a client address may send at once before the rate applies", minimum=1)
    log_level: str = setting("INFO", "log level (`DEBUG`: a line per request)", choices=LOG_LEVELS)
    log_format: str = setting(
        "",
        "log lines as JSON objects (`json`) or plain text (`text`)",
        choices=("", *LOG_FORMATS),
        shown="`json`, or `text` on a terminal",
    )
    # Where each component serves Prometheus metrics (/metrics over HTTP); "off" serves none.
    profile_metrics_listen: str = setting("0.0.0.0:9101", "where profile_svc serves `/metrics`; `off` for none")
    reporting_metrics_listen: str = setting("0.0.0.0:9102", "where reporting_svc serves `/metrics`; `off` for none")
    aggregator_metrics_listen: str = setting("0.0.0.0:9103", "where the aggregator serves `/metrics`; `off` for none")
    gateway_metrics_listen: str = setting("0.0.0.0:9104", "where the gateway serves `/metrics`; `off` for none")
    # Security (README "Security"): the component's cluster ACL user (common/storage/acl.py), TLS to the cluster,
    # and gRPC TLS. Credentials are settings, never command-line arguments.
    redis_username: str = setting("", "the component's cluster ACL user (`make run` sets each service's)", shown="none")
    redis_password: str = setting(
        "",
        "its password; or `PROFILEMESH_REDIS_PASSWORD_FILE`, a file holding it (a mounted container secret)",
        secret=True,
        shown="none",
    )
    redis_ca_file: str = setting("", "TLS to the cluster: the CA that signed the nodes' certificates", shown="none")
    redis_cert_file: str = setting("", "TLS to the cluster: an optional client certificate", shown="none")
    redis_key_file: str = setting("", "TLS to the cluster: the client certificate's key", shown="none")
    grpc_cert_file: str = setting(
        "", "the component's gRPC certificate: served, and presented as a client (unset: plaintext)", shown="none"
    )
    grpc_key_file: str = setting("", "that certificate's key", shown="none")
    grpc_ca_file: str = setting(
        "", "servers require client certificates it signed; clients verify servers with it", shown="none"
    )
    grpc_allowed_clients: str = setting(
        "", "`/service/method=identity,...;...`: which client certificates may call what", shown="none"
    )

    def __post_init__(self) -> None:
        """Check every value, however the Settings was made: a bad one raises ConfigError."""
        types = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            kind = types[spec.name]
            if isinstance(kind, type) and issubclass(kind, StrEnum):  # a plain string in code becomes the member
                object.__setattr__(self, spec.name, _member(spec, kind, getattr(self, spec.name)))
            _check(spec, kind, getattr(self, spec.name))
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as error:
            raise ConfigError(f"{variable('trusted_proxies')}: {error}") from None
        for certificate, key in (("grpc_cert_file", "grpc_key_file"), ("redis_cert_file", "redis_key_file")):
            if bool(getattr(self, certificate)) != bool(getattr(self, key)):
                raise ConfigError(f"{variable(certificate)} and {variable(key)} must be set together")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `environ` (os.environ unless given); an unset or empty variable keeps the default."""
        environ = os.environ if environ is None else environ
        types = typing.get_type_hints(cls)
        given: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = environ.get(variable(spec.name), "")
            if raw != "":
                given[spec.name] = _parse(spec, types[spec.name], raw)
        password_file = environ.get(variable("redis_password") + "_FILE", "")
        if password_file and "redis_password" not in given:
            given["redis_password"] = _read_secret(password_file)
        return cls(**given)

    def streams(self) -> StreamSettings:
        """What the stream limits use (common/rpc/streams.py), for the services' Watch RPCs and the gateway's SSE."""
        return StreamSettings(
            max_streams=self.max_streams,
            client_share_percent=self.stream_client_share_percent,
            idle_s=self.stream_idle_s,
            max_s=self.stream_max_s,
            heartbeat_s=self.stream_heartbeat_s,
            trusted_proxies=self.trusted_proxies,
        )

    def aggregation(self) -> AggregatorSettings:
        """What the aggregator's loops use (aggregator_svc/aggregator.py)."""
        return AggregatorSettings(
            partitions=self.partitions,
            group=self.aggregator_group,
            consumer=self.aggregator_consumer,
            batch=self.aggregator_batch,
            claim_idle_ms=self.aggregator_claim_idle_ms,
            maintenance_s=self.aggregator_maintenance_s,
            quiet_check_s=self.aggregator_quiet_check_s,
            retention_s=self.events_retention_s,
            linger_ms=self.aggregator_linger_ms,
            reindex_s=self.aggregator_reindex_s,
        )

    def metrics_listen(self, component: str) -> str:
        """The metrics address of `component` (profile_svc, reporting_svc, aggregator_svc or gateway)."""
        return str(getattr(self, f"{component.removesuffix('_svc')}_metrics_listen"))


@dataclass(frozen=True)
class StreamSettings:
    """The bounds of long-lived streams (PROFILEMESH_MAX_STREAMS, PROFILEMESH_STREAM_*, trusted proxies)."""

    max_streams: int
    client_share_percent: int
    idle_s: int
    max_s: int
    heartbeat_s: int
    trusted_proxies: str


@dataclass(frozen=True)
class AggregatorSettings:
    """The aggregator's partitions, consumer group and the pace of its loops (PROFILEMESH_AGGREGATOR_*)."""

    partitions: int
    group: str
    consumer: str
    batch: int
    claim_idle_ms: int
    maintenance_s: int
    quiet_check_s: int
    retention_s: int
    linger_ms: int
    reindex_s: int


def _read_secret(path: str) -> str:
    """A secret from a file, without its trailing newline; the error names the file, never its content."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().rstrip("\r\n")
    except OSError as error:
        raise ConfigError(f"{variable('redis_password')}_FILE: cannot read {path}: {error.strerror}") from None


def variable(name: str) -> str:
    """The environment variable of the setting `name`."""
    return PREFIX + name.upper()


def _shown(spec: dataclasses.Field[Any], value: object) -> str:
    return "(hidden)" if spec.metadata["secret"] else repr(value)


def _parse(spec: dataclasses.Field[Any], kind: type, raw: str) -> Any:
    if kind is int:
        try:
            return int(raw.strip(), 10)
        except ValueError:
            raise ConfigError(f"{variable(spec.name)} must be an integer, got {_shown(spec, raw)}") from None
    return raw


def _member(spec: dataclasses.Field[Any], kind: type[StrEnum], value: object) -> object:
    """`value` as a member of the enum `kind`; a value that is none of them is left for _check to refuse."""
    try:
        return kind(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _check(spec: dataclasses.Field[Any], kind: type, value: object) -> None:
    name, meta = variable(spec.name), spec.metadata
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        kind = str  # a member is a string; one that is no member is refused below, by its choices
    # bool is an int to isinstance, but True is no partition count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a string'}, got {_shown(spec, value)}")
    if meta["choices"] and value not in meta["choices"]:
        allowed = ", ".join(str(choice) for choice in meta["choices"] if choice != "")
        raise ConfigError(f"{name} must be one of {allowed}, got {_shown(spec, value)}")
    if isinstance(value, int):
        low, high = meta["minimum"], meta["maximum"]
        if low is not None and value < low:
            limits = f"{low}..{high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{name} must be {limits}, got {value}")
        if high is not None and value > high:
            limits = f"{low}..{high}" if low is not None else f"at most {high}"
            raise ConfigError(f"{name} must be {limits}, got {value}")


def markdown_table() -> str:
    """The README's configuration table, one row per setting, in declaration order."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for spec in dataclasses.fields(Settings):
        rows.append(f"| `{variable(spec.name)}` | {spec.metadata['shown']} | {spec.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
