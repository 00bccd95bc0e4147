"""What PROFILEMESH_READ_CHECK=replica costs: GetProfile throughput, p50/p99 and CPU per read, A/B in rounds.

`python -m bench.read_check [--rounds 3] [--reads 6000] [--out FILE]` starts its own cluster and services
on free ports (durability replica, the default), restarts profile_svc with each setting in turn (the
order alternates by round, so a drift of the shared machine's load falls on both), and stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.accounting import CpuMeter
from bench.lag import percentile
from bench.load import closed_loop
from localdev.system import System, on_free_ports
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

SETTINGS = ("none", "replica")
USERS = 200
DEFAULT_OUT = Path(__file__).parent / "read-check-results.md"


def use_read_check(system: System, read_check: str) -> None:
    system.stop_process("profile_svc")
    system.start_process("profile_svc", "profile_svc", PROFILEMESH_READ_CHECK=read_check)
    system.wait_healthy()


async def seed(system: System) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for index in range(USERS):
            request = profile_pb2.CreateProfileRequest(user=f"rc{index}", fields={"k": "v"})
            try:
                await stub.CreateProfile(request, timeout=5)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise


async def reads(system: System, count: int, workers: int) -> dict[str, float]:
    meter = CpuMeter(
        {
            "profile_svc": lambda: [system.processes["profile_svc"].pid],
            "cluster": lambda: [process.pid for process in system.cluster.processes.values()],
        }
    )
    rng = random.Random(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)

        async def read(user: str) -> None:
            await stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)

        before = meter.snapshot()
        started = time.perf_counter()
        result = await closed_loop((f"rc{rng.randrange(USERS)}" for _ in range(count)), read, workers)
        elapsed = time.perf_counter() - started
        after = meter.snapshot()
    latencies = [(o.ended - o.started) * 1000 for o in result.ok()]
    cpu = CpuMeter.per_request_us(before, after, len(result.ok()))
    return {
        "reads_per_s": len(result.ok()) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "profile_svc_us": cpu["profile_svc"],
        "cluster_us": cpu["cluster"],
        "errors": len(result.failed()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as directory:
        system = on_free_ports(Path(directory))
        try:
            system.start()
            asyncio.run(seed(system))
            for round_ in range(args.rounds):
                order = SETTINGS if round_ % 2 == 0 else tuple(reversed(SETTINGS))
                for read_check in order:
                    use_read_check(system, read_check)
                    asyncio.run(reads(system, 500, args.workers))  # warm-up: connections, script cache
                    got = asyncio.run(reads(system, args.reads, args.workers))
                    rows.append(
                        f"| {round_ + 1} | {read_check} | {got['reads_per_s']:.0f} | {got['p50_ms']:.2f} | "
                        f"{got['p99_ms']:.2f} | {got['profile_svc_us']:.0f} | {got['cluster_us']:.0f} | "
                        f"{got['errors']} |"
                    )
                    print(rows[-1], flush=True)
        finally:
            system.stop()
    header = (
        f"# PROFILEMESH_READ_CHECK: none against replica\n\n"
        f"GetProfile over gRPC, {args.workers} callers, {args.reads} reads a round, {USERS} users, durability "
        f"replica, one profile_svc; CPU in µs per read (profile_svc; the six cluster nodes together). "
        f"{time.strftime('%Y-%m-%d')}.\n\n"
        "| round | read check | reads/s | p50 ms | p99 ms | profile_svc CPU µs | cluster CPU µs | errors |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    args.out.write_text(header + "\n".join(rows) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
