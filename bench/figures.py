"""Figures for the end-to-end system: peak RSS under the concurrency load and read-to-visible lag.

`python -m bench.figures` starts its own cluster and services on free ports and stops them.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import grpc

from bench.lag import measure_lag
from bench.sampling import PeakRss
from localdev.system import System, on_free_ports
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc


async def concurrency_load(system: System) -> dict[str, float]:
    """The concurrency test's load: 50 racing creates of one user, then 1,000 concurrent reads."""
    run = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        async with PeakRss(system) as rss:
            racing = [
                profiles.CreateProfile(profile_pb2.CreateProfileRequest(user=f"race{run}", fields={"k": "v"}))
                for _ in range(50)
            ]
            await asyncio.gather(*racing, return_exceptions=True)
            users = [f"c{run}-{i}" for i in range(20)]
            await asyncio.gather(
                *(profiles.CreateProfile(profile_pb2.CreateProfileRequest(user=u, fields={"k": "v"})) for u in users)
            )
            await asyncio.gather(
                *(profiles.GetProfile(profile_pb2.GetProfileRequest(user=users[i % 20])) for i in range(1000))
            )
            await asyncio.sleep(1)  # the aggregator catches up meanwhile
    return rss.peak_mb


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        system = on_free_ports(Path(directory))
        try:
            system.start()
            peak = asyncio.run(concurrency_load(system))
            print("peak RSS under the concurrency load (MB):", {k: round(v, 1) for k, v in peak.items()})
            lag = asyncio.run(measure_lag(f"127.0.0.1:{system.profile_port}", f"127.0.0.1:{system.reporting_port}"))
            print("read-to-visible lag:", {k: round(v, 2) for k, v in lag.items()})
        finally:
            system.stop()


if __name__ == "__main__":
    main()
