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


# Background reads in flight at most: below the services' own limit (PROFILEMESH_MAX_IN_FLIGHT,
# 256 by default), so the load never makes the server shed a probe's read.
MAX_BACKGROUND_IN_FLIGHT = 128


async def _steady_reads(
    profiles: profile_pb2_grpc.ProfileServiceStub, users: list[str], rate: float, stop: asyncio.Event
) -> dict[str, int]:
    """Open loop: read i is due at start + i/rate, whether or not earlier ones have answered.

    A read due while MAX_BACKGROUND_IN_FLIGHT are still waiting is dropped (counted, not sent);
    failed reads are counted too. Returns made, errors and dropped.
    """
    counts = {"made": 0, "errors": 0, "dropped": 0}
    in_flight: set[asyncio.Task] = set()

    async def read(user: str) -> None:
        try:
            await profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)
        except grpc.aio.AioRpcError:
            counts["errors"] += 1

    sent, start = 0, time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - start) * rate)
        for index in range(sent, due):
            if len(in_flight) >= MAX_BACKGROUND_IN_FLIGHT:
                counts["dropped"] += 1
                continue
            task = asyncio.create_task(read(users[index % len(users)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            counts["made"] += 1
        sent = due
        await asyncio.sleep(0.002)
    await asyncio.gather(*in_flight)
    return counts


async def _read_once(profiles: profile_pb2_grpc.ProfileServiceStub, user: str, attempts: int = 5) -> int:
    """A probe's read, retried if the service sheds it (RESOURCE_EXHAUSTED); returns the retries needed."""
    for attempt in range(attempts):
        try:
            await profiles.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)
            return attempt
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.01)
    return attempts


async def measure_lag(
    profile_target: str,
    reporting_target: str,
    probes: int = 1000,
    background_rate: float = 0,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Lag in milliseconds (median, p99, max) over `probes` reads, with an optional steady load.

    Also says how much of the background load was made (reads and the rate achieved), failed or
    dropped, and how often a probe's read had to be retried because the service shed it.
    Probing stops early after `max_seconds` (if given), so a slow system can't stall a benchmark.
    """
    run = uuid.uuid4().hex[:8]
    async with (
        grpc.aio.insecure_channel(profile_target) as profile_channel,
        grpc.aio.insecure_channel(reporting_target) as reporting_channel,
    ):
        profiles = profile_pb2_grpc.ProfileServiceStub(profile_channel)
        reports = reporting_pb2_grpc.ReportingServiceStub(reporting_channel)
        probe_users = [f"lag{run}-{i}" for i in range(probes)]
        load_users = [f"load{run}-{i}" for i in range(100)]
        for user in probe_users + load_users:
            await profiles.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

        stop = asyncio.Event()
        load_started = time.perf_counter()
        load = (
            asyncio.create_task(_steady_reads(profiles, load_users, background_rate, stop)) if background_rate else None
        )
        lags: list[float] = []
        retries = 0
        deadline = None if max_seconds is None else time.perf_counter() + max_seconds
        for user in probe_users:
            if deadline is not None and time.perf_counter() > deadline and lags:
                break
            retries += await _read_once(profiles, user)
            served = time.perf_counter()
            while (await reports.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=5)).reads < 1:
                await asyncio.sleep(0.0005)
            lags.append((time.perf_counter() - served) * 1000)
        stop.set()
        background = await load if load else {"made": 0, "errors": 0, "dropped": 0}
        elapsed = time.perf_counter() - load_started
    return {
        "probes": len(lags),
        "probe_retries": retries,
        "background_reads": background["made"],
        "background_rate": background["made"] / elapsed,
        "background_errors": background["errors"],
        "background_dropped": background["dropped"],
        "median_ms": statistics.median(lags),
        "p99_ms": percentile(lags, 0.99),
        "max_ms": max(lags),
    }
