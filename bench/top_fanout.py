"""CPU per GetTopProfiles call at a given partition count: reporting_svc's and the cluster's (issue 23's target:
at 4,096 partitions no more than 2x its cost at 16).

`python -m bench.top_fanout [--partitions 16,4096] [--calls 200] [--users 2000] [--limit 10] [--cache-ms 0]
[--concurrency 1]`: for each partition
count, a local cluster of its own (three primaries, three replicas) with the functions loaded and the count
recorded, `users` readers' counts written straight into the statistics and the top list's index, as the aggregator
would have them (no aggregator or profile_svc runs: their own loops would be counted in the cluster's CPU), and one reporting_svc with the top-list cache off by default
(PROFILEMESH_REPORTING_CACHE_MS=0: every call its own fan-out). After a warm-up it makes `calls` GetTopProfiles,
`concurrency` at a time (sequential by default), and reads utime+stime from /proc of the reporting_svc process
and of the six nodes before and after. With `--cache-ms 250 --concurrency 8`: the cost per call under load, when
calls share fan-outs. Run from a checkout's root: the reporting_svc it starts is that checkout's
(`python -m reporting_svc`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.accounting import cpu_seconds
from common.storage import keys
from localdev.system import System, on_free_ports
from localdev.waiting import poll_until
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc

WARMUP = 20


@dataclass(frozen=True)
class Cost:
    partitions: int
    calls: int
    wall_ms: float  # per call (the time of all calls, divided by their number)
    reporting_us: float  # reporting_svc's CPU per call
    primaries_us: float  # the three primaries' CPU per call
    cluster_us: float  # all six nodes' CPU per call

    def row(self) -> str:
        return (
            f"| {self.partitions:,} | {self.calls} | {self.wall_ms:.2f} | {self.reporting_us:,.0f} "
            f"| {self.primaries_us:,.0f} | {self.cluster_us:,.0f} |"
        )


def measure(partitions: int, calls: int, users: int, limit: int, cache_ms: int = 0, concurrency: int = 1) -> Cost:
    settings = {"PROFILEMESH_PARTITIONS": str(partitions), "PROFILEMESH_REPORTING_CACHE_MS": str(cache_ms)}
    system = on_free_ports(Path(tempfile.mkdtemp(prefix=f"top-fanout-{partitions}-")), settings)
    try:
        system.cluster.start()
        system.migrate()
        _seed(system, partitions, users)
        reporting = system.start_replica("reporting_svc", 0)
        poll_until(lambda: system.grpc_status(system.reporting_port) == "SERVING", 60, "reporting_svc to serve")
        nodes = list(system.cluster.processes.values())
        primaries = [
            system.cluster.processes[index]
            for index in range(len(system.cluster.ports))
            if system.cluster.node(index).info("replication")["role"] == "master"
        ]
        pids = [p.pid for p in (reporting, *primaries, *nodes)]
        before, after, wall = asyncio.run(_calls(system.reporting_port, pids, calls, concurrency, limit, users))
        used = [b - a for a, b in zip(before, after, strict=True)]
        per_call_us = 1e6 / calls
        return Cost(
            partitions,
            calls,
            wall / calls * 1000,
            used[0] * per_call_us,
            sum(used[1 : 1 + len(primaries)]) * per_call_us,
            sum(used[1 + len(primaries) :]) * per_call_us,
        )
    finally:
        system.stop()


async def _calls(
    port: int, pids: list[int], calls: int, concurrency: int, limit: int, users: int
) -> tuple[list[float], list[float], float]:
    """The processes' CPU before and after `calls` GetTopProfiles, `concurrency` at a time, and the time taken."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reporting_pb2_grpc.ReportingServiceStub(channel)
        request = reporting_pb2.GetTopProfilesRequest(limit=limit)
        for _ in range(WARMUP):
            await stub.GetTopProfiles(request, timeout=30)
        remaining = iter(range(calls))

        async def caller() -> None:
            for _ in remaining:
                assert len((await stub.GetTopProfiles(request, timeout=30)).results) == min(limit, users)

        before = [cpu_seconds([pid]) for pid in pids]
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        return before, [cpu_seconds([pid]) for pid in pids], wall


def _seed(system: System, partitions: int, users: int) -> None:
    """The partition count as profile_svc records it, and `users` readers spread over the partitions, each also in
    its partition's bucket of the top list's index."""
    rng = random.Random(partitions)
    with system.cluster.client() as admin:
        admin.set(keys.PARTITIONS_KEY, partitions)
        pipeline = admin.pipeline()
        for index in range(users):
            user = f"reader{index}"
            partition, reads = keys.partition_of(user, partitions), rng.randint(1, 1000)
            pipeline.zadd(keys.reads_key(partition), {user: reads})
            pipeline.zadd(keys.top_key(keys.top_bucket_of(partition, partitions)), {user: reads})
        pipeline.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", default="16,4096", help="comma-separated partition counts")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--cache-ms", type=int, default=0, help="PROFILEMESH_REPORTING_CACHE_MS of reporting_svc")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight at once")
    options = parser.parse_args()
    costs = [
        measure(int(count), options.calls, options.users, options.limit, options.cache_ms, options.concurrency)
        for count in options.partitions.split(",")
    ]
    print(
        "| partitions | calls | ms per call | reporting_svc µs CPU/call | primaries µs CPU/call | cluster µs CPU/call |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for cost in costs:
        print(cost.row())
    if len(costs) > 1:
        first, last = costs[0], costs[-1]
        print(
            f"\n{last.partitions:,} vs {first.partitions:,} partitions: reporting_svc "
            f"{last.reporting_us / first.reporting_us:.2f}x, cluster {last.cluster_us / first.cluster_us:.2f}x, "
            f"both {(last.reporting_us + last.cluster_us) / (first.reporting_us + first.cluster_us):.2f}x"
        )


if __name__ == "__main__":
    main()
