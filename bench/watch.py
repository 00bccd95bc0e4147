"""Figures for WatchProfileEvents: delivery latency at 500 changes/s, and what each subscriber costs.

`python -m bench.watch` starts its own cluster and services on free ports and stops them.
- Latency: a writer process creates new users at 500/s and records when each create was acknowledged;
  one subscriber (another process) records when each event arrived. Latency = arrival - acknowledgement,
  both by the wall clock of this one machine. Negative: the event arrived before the write's reply
  (the event is appended before the durability wait).
- Cost: profile_svc's CPU time and RSS with 0, 1, 10 and 100 subscribers while the writer makes 100
  changes/s, the subscribers spread over four processes; per subscriber = (with N - with 0) / N.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import psutil

from localdev.system import System, on_free_ports
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

SUBSCRIBER_PROCESSES = 4


def write(port: int, prefix: str, rate: int, seconds: float, acknowledged: multiprocessing.Queue) -> None:
    """Create `rate` new users a second for `seconds`; put {user: acknowledged at (wall clock)} on the queue."""

    async def run() -> dict[str, float]:
        acked: dict[str, float] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)

            async def create(user: str) -> None:
                try:
                    await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=10)
                    acked[user] = time.time()
                except grpc.aio.AioRpcError:
                    pass

            started, tasks = time.monotonic(), []
            for i in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                tasks.append(asyncio.create_task(create(f"{prefix}{i}")))
            await asyncio.gather(*tasks)
        return acked

    acknowledged.put(asyncio.run(run()))


def subscribe(
    port: int, count: int, prefix: str, seconds: float, ready: multiprocessing.Queue, arrivals: multiprocessing.Queue
) -> None:
    """`count` subscribers for `seconds`; put {user: first arrival (wall clock)} of the first one on the queue."""

    async def run() -> dict[str, float]:
        seen: dict[str, float] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            calls = [stub.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest()) for _ in range(count)]
            for call in calls:
                await call.read()
            ready.put(count)

            async def follow(call, record: bool) -> None:
                while (message := await call.read()) is not grpc.aio.EOF:
                    if record and message.event.user.startswith(prefix):
                        seen.setdefault(message.event.user, time.time())

            tasks = [asyncio.create_task(follow(call, i == 0)) for i, call in enumerate(calls)]
            await asyncio.sleep(seconds)
            for call in calls:
                call.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return seen

    arrivals.put(asyncio.run(run()))


def run_round(system: System, subscribers: int, rate: int, seconds: float) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    ready, arrivals, acknowledged = context.Queue(), context.Queue(), context.Queue()
    prefix = f"b{uuid.uuid4().hex[:6]}-"
    shares = [
        subscribers // SUBSCRIBER_PROCESSES + (i < subscribers % SUBSCRIBER_PROCESSES)
        for i in range(SUBSCRIBER_PROCESSES)
    ]
    shares = [share for share in shares if share]
    readers = [
        context.Process(target=subscribe, args=(system.profile_port, share, prefix, seconds + 3, ready, arrivals))
        for share in shares
    ]
    for reader in readers:
        reader.start()
    for _ in readers:
        ready.get(timeout=60)
    service = psutil.Process(system.processes["profile_svc"].pid)
    time.sleep(1)
    cpu_before, rss_before = sum(service.cpu_times()[:2]), service.memory_info().rss
    writer = context.Process(target=write, args=(system.profile_port, prefix, rate, seconds, acknowledged))
    writer.start()
    acked = acknowledged.get(timeout=seconds + 60)
    cpu = sum(service.cpu_times()[:2]) - cpu_before
    rss = service.memory_info().rss
    writer.join()
    seen = [arrivals.get(timeout=60) for _ in readers]
    for reader in readers:
        reader.join()
    result = {
        "cpu_s": cpu,
        "rss_mb": rss / 2**20,
        "rss_growth_mb": (rss - rss_before) / 2**20,
        "acknowledged": len(acked),
    }
    if seen and seen[0]:
        latencies_ms = sorted((seen[0][user] - at) * 1000 for user, at in acked.items() if user in seen[0])
        result["delivered"] = len(latencies_ms)
        result["p50_ms"] = statistics.median(latencies_ms)
        result["p99_ms"] = latencies_ms[int(len(latencies_ms) * 0.99) - 1]
    return result


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        system = on_free_ports(
            Path(directory), {"PROFILEMESH_MAX_STREAMS": "200", "PROFILEMESH_STREAM_CLIENT_SHARE_PERCENT": "100"}
        )
        try:
            system.start()
            latency = run_round(system, 1, rate=500, seconds=10)
            print(
                f"delivery latency at 500 changes/s, 1 subscriber: p50 {latency['p50_ms']:.1f} ms, "
                f"p99 {latency['p99_ms']:.1f} ms ({latency['delivered']} of {latency['acknowledged']} delivered)"
            )
            baseline = run_round(system, 0, rate=100, seconds=10)
            print(
                f"0 subscribers, 100 changes/s for 10 s: profile_svc {baseline['cpu_s']:.2f} CPU s, RSS {baseline['rss_mb']:.0f} MB"
            )
            for count in (1, 10, 100):
                result = run_round(system, count, rate=100, seconds=10)
                per_cpu_ms = (result["cpu_s"] - baseline["cpu_s"]) / count / 10 * 1000
                print(
                    f"{count} subscribers, 100 changes/s for 10 s: profile_svc {result['cpu_s']:.2f} CPU s, "
                    f"RSS {result['rss_mb']:.0f} MB (+{result['rss_growth_mb']:.1f} MB during the round); per subscriber "
                    f"{per_cpu_ms:.1f} ms CPU per second, {(result['rss_mb'] - baseline['rss_mb']) / count:.2f} MB; "
                    f"p50 {result.get('p50_ms', float('nan')):.1f} ms, p99 {result.get('p99_ms', float('nan')):.1f} ms"
                )
        finally:
            system.stop()


if __name__ == "__main__":
    main()
