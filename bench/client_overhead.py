"""The client's own CPU per call against a bare stub, same run: `python -m bench.client_overhead [N]`.

Starts a local system, then alternates rounds of N GetProfile calls through a bare grpc.aio stub, through
AsyncProfileClient and through the blocking ProfileClient, reporting this process's CPU µs per call (the
services' CPU is the same for all three and left out).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc

from localdev.system import on_free_ports
from profilemesh.client import AsyncProfileClient, ProfileClient
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with tempfile.TemporaryDirectory() as directory:
        system = on_free_ports(Path(directory))
        system.start()
        target = f"127.0.0.1:{system.profile_port}"
        try:
            results: dict[str, list[float]] = {"bare stub": [], "AsyncProfileClient": [], "ProfileClient": []}

            async def bare() -> float:
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = profile_pb2_grpc.ProfileServiceStub(channel)
                    await stub.GetProfile(profile_pb2.GetProfileRequest(user="bench"), timeout=5)
                    start = time.process_time()
                    for _ in range(n):
                        reply = await stub.GetProfile(profile_pb2.GetProfileRequest(user="bench"), timeout=5)
                        dict(reply.fields)
                    return time.process_time() - start

            async def client() -> float:
                async with AsyncProfileClient(target) as profiles:
                    await profiles.get("bench")
                    start = time.process_time()
                    for _ in range(n):
                        await profiles.get("bench")
                    return time.process_time() - start

            def blocking() -> float:
                with ProfileClient(target) as profiles:
                    profiles.get("bench")
                    start = time.process_time()
                    for _ in range(n):
                        profiles.get("bench")
                    return time.process_time() - start

            with ProfileClient(target) as profiles:
                profiles.ensure_created("bench", {"email": "bench@example.com"})
            for _ in range(3):
                results["bare stub"].append(asyncio.run(bare()))
                results["AsyncProfileClient"].append(asyncio.run(client()))
                results["ProfileClient"].append(blocking())
            for name, seconds in results.items():
                median = sorted(seconds)[1]
                print(f"{name:20} {median / n * 1e6:7.1f} µs CPU per GetProfile (median of 3 rounds of {n})")
        finally:
            system.stop()


if __name__ == "__main__":
    main()
