"""Read-to-visible lag: from a GetProfile's answer to its count showing in ReportingService.

Each probe reads a user nobody else reads, then polls GetProfileStats until the read shows;
a background load of reads at a steady rate can run meanwhile.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import grpc

from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _steady_reads(profiles: profile_pb2_grpc.ProfileServiceStub, users: list[str], rate: float, stop: asyncio.Event) -> int:
    """Reads at `rate` per second (in ticks of 10 ms) until stopped; returns how many were made."""
    made, start = 0, time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - start) * rate)
        batch = [profiles.GetProfile(profile_pb2.GetProfileRequest(user=users[(made + i) % len(users)]), timeout=5)
                 for i in range(due - made)]
        await asyncio.gather(*batch)
        made = due
        await asyncio.sleep(0.01)
    return made


async def measure_lag(profile_target: str, reporting_target: str, probes: int = 1000, background_rate: float = 0) -> dict[str, float]:
    """Lag in milliseconds (median, p99, max) over `probes` reads, with an optional steady load."""
    run = uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(profile_target) as profile_channel, \
            grpc.aio.insecure_channel(reporting_target) as reporting_channel:
        profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        reports = reporting_pb2_grpc.ReportingServiceStub(reporting_channel)
        probe_users = [f"lag{run}-{i}" for i in range(probes)]
        load_users = [f"load{run}-{i}" for i in range(100)]
        for user in probe_users + load_users:
            await profiles.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

        stop = asyncio.Event()
        load = asyncio.create_task(_steady_reads(profiles, load_users, background_rate, stop)) if background_rate else None
        lags: list[float] = []
        for user in probe_users:
            await profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)
            served = time.perf_counter()
            while (await reports.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=5)).reads < 1:
                await asyncio.sleep(0.0005)
            lags.append((time.perf_counter() - served) * 1000)
        stop.set()
        background = await load if load else 0
    return {
        "probes": probes,
        "background_reads": background,
        "median_ms": statistics.median(lags),
        "p99_ms": percentile(lags, 0.99),
        "max_ms": max(lags),
    }
