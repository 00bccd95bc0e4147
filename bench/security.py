"""The cost of security: REST reads and direct gRPC reads, everything plaintext vs everything secured.

`python -m bench.security` (run by `make bench`) starts a plaintext system (ACL users, plaintext
everywhere) and then a secured one (ACL users, TLS cluster on redis-server, mutual TLS between the
gateway and the services and for the gRPC load generator), loads the same profiles into each, and
measures each with the same generators as bench/run.py. It prints a table and writes
bench/security-results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import grpc

from bench.pyload import run_pyload
from bench.results import LoadResult
from bench.wrk_runner import run_wrk
from localdev.system import System, on_free_ports
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc

PREFIX = "secbench"
PARTITIONS = 16
SETTINGS = {"PROFILEMESH_PARTITIONS": str(PARTITIONS), "PROFILEMESH_LOG_LEVEL": "WARNING"}
RESULTS = Path(__file__).resolve().parent / "security-results.md"


async def _create(stub: profile_pb2_grpc.ProfileServiceStub, i: int) -> None:
    """One profile; UNAVAILABLE says the outcome is unknown and a retry is safe (ALREADY_EXISTS then means done)."""
    request = profile_pb2.CreateProfileRequest(user=f"{PREFIX}{i}", fields={"email": f"{i}@example.com"})
    for attempt in range(5):
        try:
            await stub.CreateProfile(request, timeout=10)
            return
        except grpc.aio.AioRpcError as error:
            if attempt and error.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                raise
            await asyncio.sleep(0.2 * 2**attempt)


async def _load(system: System, users: int) -> None:
    """The profiles the reads pick from, created through the API (the admin needs no TLS options here)."""
    async with system.grpc_aio_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for start in range(0, users, 100):
            await asyncio.gather(*(_create(stub, i) for i in range(start, min(start + 100, users))))


def measure(work: Path, secure: bool, users: int, concurrency: int, seconds: int) -> list[LoadResult]:
    label = "secured" if secure else "plaintext"
    system = on_free_ports(work / label, SETTINGS, secure=secure)
    try:
        system.start(timeout_s=120)
        asyncio.run(_load(system, users))
        rest = run_wrk("REST reads", label, system.gateway_url, "reads.lua", [PREFIX, str(users)], concurrency, seconds)
        grpc_reads = run_pyload(
            "gRPC GetProfile",
            label,
            "grpc",
            f"127.0.0.1:{system.profile_port}",
            PREFIX,
            users,
            concurrency,
            seconds,
            1.0,
            PARTITIONS,
            env=system.grpc_env("localdev"),
        )
        return [rest, grpc_reads]
    finally:
        system.stop()


def table(results: list[LoadResult]) -> str:
    lines = [
        "| scenario | system | concurrency | req/s | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in sorted(results, key=lambda r: (r.scenario, r.system)):
        lines.append(
            f"| {result.scenario} | {result.system} | {result.concurrency} | {result.rps:,.0f} | "
            f"{result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="each measured run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-security-") as work:
        results = [
            *measure(Path(work), False, args.users, args.concurrency, args.seconds),
            *measure(Path(work), True, args.users, args.concurrency, args.seconds),
        ]
    text = (
        "# The cost of security\n\n`python -m bench.security` on the shared 2-core machine (noisy); "
        f"{args.seconds} s per run at concurrency {args.concurrency}, reads of {args.users} profiles.\n\n"
        + table(results)
        + "\n"
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
