"""Prometheus metrics of every component, and the HTTP endpoint that serves them.

Names follow Prometheus conventions: `_total` counters, base units (`_seconds`), and labels of
bounded cardinality only (a method, a route pattern, a status code, a partition; never a user).
The process collectors (CPU, RSS, open file descriptors) come with prometheus_client's default registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from common.errors import StartupError
from common.runtime.addresses import parse_listen

log = logging.getLogger(__name__)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: nothing here reads them

# From half a millisecond to ten seconds: our calls take milliseconds, deadlines are seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# gRPC servers (profile_svc, reporting_svc, aggregator_svc's health).
GRPC_REQUESTS = Counter(
    "profilemesh_grpc_server_requests", "gRPC calls handled, by method and status code", ["method", "code"]
)
GRPC_LATENCY = Histogram(
    "profilemesh_grpc_server_request_duration_seconds",
    "gRPC call latency in the server",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_SHED = Counter(
    "profilemesh_grpc_server_shed", "gRPC calls refused with RESOURCE_EXHAUSTED by load shedding", ["method"]
)
GRPC_IN_FLIGHT = Gauge("profilemesh_grpc_server_in_flight", "gRPC calls being handled", ["method"])

# The gateway's REST routes (route = the pattern, e.g. /profile/{user}).
HTTP_REQUESTS = Counter(
    "profilemesh_http_requests", "HTTP requests answered, by route, method and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "profilemesh_http_request_duration_seconds",
    "HTTP request latency in the gateway",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("profilemesh_http_in_flight", "HTTP requests being handled")
HTTP_SHED = Counter("profilemesh_http_shed", "HTTP requests refused with 429 by load shedding")

# The cluster client.
CLUSTER_COMMANDS = Counter(
    "profilemesh_cluster_commands", "cluster commands run (kind: command or script)", ["kind", "name"]
)
CLUSTER_ERRORS = Counter(
    "profilemesh_cluster_errors", "cluster commands and scripts that failed, by error kind", ["kind"]
)
CLUSTER_RETRIES = Counter(
    "profilemesh_cluster_retries", "scripts run again because the cluster proved it had not run them"
)
CLUSTER_REDIRECTS = Counter("profilemesh_cluster_redirects", "MOVED and ASK redirects received", ["type"])
DURABILITY_WAITS = Counter(
    "profilemesh_cluster_durability_waits",
    "operations confirmed by a WAIT/WAITAOF (a group commit's one wait confirms each of its changes)",
    ["level"],
)
GROUP_COMMIT_SIZE = Histogram(
    "profilemesh_cluster_group_commit_size",
    "changes sent in one pipeline ahead of one durability wait (its count: the waits sent)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
SHARED_PIPELINE_SIZE = Histogram(
    "profilemesh_cluster_shared_pipeline_size",
    "commands needing no confirmation sent together in one pipeline to a primary (the aggregator's takes of a "
    "tick, its reads of its own pending entries)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
DURABILITY_FAILURES = Counter(
    "profilemesh_cluster_durability_wait_failures", "writes whose durability wait was not met in time", ["level"]
)

# The aggregator.
EVENTS_APPLIED = Counter("profilemesh_aggregator_events_applied", "events counted into the statistics")
PARTITIONS_OWNED = Gauge(
    "profilemesh_aggregator_partitions_owned", "partitions this replica consumes (its share among the live replicas)"
)
BATCHES = Counter("profilemesh_aggregator_batches", "batches applied (one apply script each)")
RECLAIMED = Counter("profilemesh_aggregator_reclaimed_entries", "entries taken over from a stalled consumer")
TRIMS = Counter("profilemesh_aggregator_trims", "trim runs over a partition's stream")
EVENTS_MALFORMED = Counter(
    "profilemesh_aggregator_events_malformed", "entries without a user or with an unknown type, acknowledged unapplied"
)
RECOUNT_STEPS = Counter("profilemesh_aggregator_recount_steps", "recount steps run (recount_step.lua)")
TOP_COPIES = Counter(
    "profilemesh_aggregator_top_copies", "copies of a partition's outbox into the top list's index", ["outcome"]
)
TOP_COPIES_DUE = Gauge(
    "profilemesh_aggregator_top_copies_due", "partitions whose outbox waits for its copy into the top list's index"
)
TOP_COPY_DELAY = Histogram(
    "profilemesh_aggregator_top_copy_delay_seconds",
    "from when a partition's copy was asked for to when it was made: how far a top list follows the counts",
    buckets=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30),
)
STREAM_LENGTH = Gauge("profilemesh_stream_length_entries", "entries in a partition's event stream", ["partition"])
LAG = Gauge("profilemesh_aggregator_lag_entries", "entries not yet delivered to the consumer group", ["partition"])
PENDING = Gauge("profilemesh_aggregator_pending_entries", "entries delivered but not yet acknowledged", ["partition"])
OLDEST_PENDING_AGE = Gauge(
    "profilemesh_aggregator_oldest_pending_age_seconds",
    "age of the oldest delivered, unacknowledged entry (0 when none)",
    ["partition"],
)
OLDEST_UNDELIVERED_AGE = Gauge(
    "profilemesh_aggregator_oldest_undelivered_age_seconds",
    "age of the oldest entry not yet delivered (0 when none)",
    ["partition"],
)


Metric = TypeVar("Metric", Counter, Gauge, Histogram)


def children(metric: Metric) -> Callable[..., Metric]:
    """`metric.labels(...)` memoised: on a request's path the lookup costs a dict get, not a lock and a tuple."""
    made: dict[tuple[str, ...], Metric] = {}

    def child(*labels: str) -> Metric:
        found = made.get(labels)
        if found is None:
            found = made[labels] = metric.labels(*labels)
        return found

    return child


def serve_metrics(listen: str) -> None:
    """Serve /metrics on `listen` (host:port) from a thread; "off" serves nothing."""
    if listen == "off":
        return
    try:
        host, port = parse_listen(listen)
        start_http_server(port, addr=host)
    except (OSError, ValueError) as error:
        raise StartupError(
            f"cannot serve metrics on {listen!r}: {error} (set this component's PROFILEMESH_..._METRICS_LISTEN "
            "to a free host:port, or off)"
        ) from None
    log.info("metrics on http://%s/metrics", listen)
