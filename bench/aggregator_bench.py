"""Aggregator throughput: how fast 1 or 2 replicas drain a backlog written while none ran.

The backlog goes straight into the partition streams (bench.seeding.write_backlog); then the
replicas start and the consumer group's remaining work (lag plus pending, summed over every
partition) is polled until it reaches zero. Events/s counts from the first applied batch to
the last, so process start-up is reported apart (as wall time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster

from bench.accounting import cpu_seconds, rss_mb
from bench.seeding import MIX, write_backlog
from common.storage import keys
from localdev.ports import free_ports
from localdev.system import System

POLL_S = 0.02
REPLICA = "aggregator_svc"


@dataclass
class DrainResult:
    replicas: int
    mix: str  # the backlog's event types
    backlog: int  # remaining work when the replicas started
    drain_s: float  # first progress -> nothing left
    wall_s: float  # replicas started -> nothing left, start-up included
    events_per_s: float
    aggregator_cores: float  # CPU the replicas used while draining, in cores
    cluster_cores: float  # CPU the six cluster nodes used meanwhile
    peak_rss_mb: float  # the largest replica's peak RSS
    slow_commands: int  # commands the primaries logged as slower than 10 ms (SLOWLOG) while draining
    slowest_ms: float  # and the slowest of them
    finished: bool
    notes: list[str] = field(default_factory=list)


def remaining(client: RedisCluster, group: str, partitions: int) -> int:
    """Entries of every partition not yet applied and acknowledged by the group."""
    total = 0
    for partition in range(partitions):
        stream = keys.events_key(partition)
        for info in client.xinfo_groups(stream):
            if info["name"] != group:
                continue
            lag = info.get("lag")
            if lag is None:  # Valkey can't count it (e.g. after deletions): at least one entry left?
                lag = int(bool(client.xrange(stream, f"({info['last-delivered-id']}", "+", count=1)))
            total += int(lag) + int(info["pending"])
    return total


def _primaries(system: System) -> list[redis.Redis]:
    nodes = [system.cluster.node(index) for index in system.cluster.processes]
    return [node for node in nodes if node.info("replication")["role"] == "master"]


def _slowlog(primaries: list[redis.Redis]) -> list[float]:
    """Durations (ms) of the commands slower than slowlog-log-slower-than (10 ms by default)."""
    return [entry["duration"] / 1000 for node in primaries for entry in node.slowlog_get(1024)]


def _replica_names(replicas: int) -> list[str]:
    return [REPLICA if i == 0 else f"{REPLICA}_{i + 1}" for i in range(replicas)]


def drain(
    system: System,
    replicas: int,
    events: int,
    users: int,
    partitions: int,
    group: str,
    timeout_s: float,
    on_start: Callable[[list[int]], object] | None = None,
    mix: dict[str, int] = MIX,
) -> DrainResult:
    """Stop the aggregator, write `events`, start `replicas` replicas, time until all is applied.

    `on_start` gets the replicas' PIDs once they apply their first events (to attach a profiler).
    Leaves one replica (the system's own) running afterwards.
    """
    client = RedisCluster.from_url(system.cluster.admin_url, decode_responses=True)
    try:
        for name in [n for n in system.processes if n.startswith(REPLICA)]:
            system.stop_process(name)
        write_backlog(system.cluster.admin_url, events, users, partitions, seed=replicas, mix=mix)
        backlog = remaining(client, group, partitions)
        primaries = _primaries(system)
        for node in primaries:
            node.config_set("slowlog-max-len", 1024)
            node.slowlog_reset()

        names = _replica_names(replicas)
        started = time.perf_counter()
        extra_ports = free_ports(len(names) - 1)
        for index, name in enumerate(names):
            listen = {} if index == 0 else {"PROFILEMESH_AGGREGATOR_LISTEN": f"127.0.0.1:{extra_ports[index - 1]}"}
            system.start_process(name, "aggregator_svc", **listen)
        nodes = [p.pid for p in system.cluster.processes.values()]
        replica_pids = [system.processes[name].pid for name in names]

        # The drain starts at the last poll that still saw the whole backlog (start-up excluded).
        last_full, peak_rss, left, now = started, 0.0, backlog, started
        cpu_at_start = (cpu_seconds(replica_pids), cpu_seconds(nodes))
        deadline = started + timeout_s
        while left > 0 and now < deadline:
            time.sleep(POLL_S)
            left, now = remaining(client, group, partitions), time.perf_counter()
            peak_rss = max(peak_rss, max(rss_mb([pid]) for pid in replica_pids))
            if left >= backlog:
                last_full, cpu_at_start = now, (cpu_seconds(replica_pids), cpu_seconds(nodes))
            elif on_start is not None:
                on_start(replica_pids)
                on_start = None
            exited = [name for name in names if system.processes[name].poll() is not None]
            if exited:
                raise RuntimeError(f"aggregator replicas exited while draining: {exited}")
        drain_s = max(now - last_full, POLL_S)
        aggregator_cpu = cpu_seconds(replica_pids) - cpu_at_start[0]
        cluster_cpu = cpu_seconds(nodes) - cpu_at_start[1]
        finished = left == 0
        slow = _slowlog(primaries)
        for node in primaries:
            node.close()
        notes = [] if finished else [f"{left} events still unapplied after {timeout_s:.0f}s"]
        for name in names[1:]:
            system.stop_process(name)
        return DrainResult(
            replicas=replicas,
            mix=", ".join(f"{share}% {kind}s" for kind, share in mix.items() if share),
            backlog=backlog,
            drain_s=drain_s,
            wall_s=now - started,
            events_per_s=(backlog - left) / drain_s,
            aggregator_cores=aggregator_cpu / drain_s,
            cluster_cores=cluster_cpu / drain_s,
            peak_rss_mb=peak_rss,
            slow_commands=len(slow),
            slowest_ms=max(slow, default=0.0),
            finished=finished,
            notes=notes,
        )
    finally:
        client.close()
