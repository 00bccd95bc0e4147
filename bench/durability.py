"""What each durability setting costs and buys: create throughput and latency, and creates lost on failover.

`python -m bench.durability` starts its own cluster and services on free ports and stops them.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from bench.failover import run_failover
from bench.lag import percentile
from bench.load import closed_loop
from localdev.system import System, on_free_ports
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

SETTINGS = ("none", "local", "replica")


def use_durability(system: System, durability: str) -> None:
    system.stop_process("profile_svc")
    system.start_process("profile_svc", "profile_svc", PROFILEMESH_DURABILITY=durability)
    system.wait_healthy()


async def create_throughput(system: System, creates: int, workers: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:6]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)

        async def create(user: str) -> None:
            await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

        started = time.perf_counter()
        result = await closed_loop((f"d{run}-{i}" for i in range(creates)), create, workers)
        elapsed = time.perf_counter() - started
    latencies = [(o.ended - o.started) * 1000 for o in result.ok()]
    return {
        "creates_per_s": len(result.ok()) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "errors": len(result.failed()),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        system = on_free_ports(Path(directory))
        try:
            system.start()
            print(
                "| durability | creates/s (16 callers) | p50 ms | p99 ms | errors "
                "| failover: acknowledged | errors | lost | promoted after s | writes back after s |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for durability in SETTINGS:
                use_durability(system, durability)
                cost = asyncio.run(create_throughput(system, creates=5000, workers=16))
                failover = run_failover(system, users=3000, workers=16, kill_after=500)
                print(
                    f"| {durability} | {cost['creates_per_s']:.0f} | {cost['p50_ms']:.2f} | {cost['p99_ms']:.2f} | {cost['errors']} "
                    f"| {len(failover.load.ok())} | {failover.load.error_counts()} | {len(failover.lost)} "
                    f"| {failover.promoted_after_s:.1f} | {failover.recovered_after_s:.1f} |",
                    flush=True,
                )
        finally:
            system.stop()


if __name__ == "__main__":
    main()
