"""SIGTERM under load drains in-flight calls; a burst beyond capacity is shed fast with bounded memory."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import urllib.request
import uuid

import aiohttp
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.load import LoadResult, closed_loop
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.helpers import wait_until

# What profile_svc may use at most under the overload burst below (it idles near 60 MB).
RSS_BOUND_MB = 150


def _create_users(system: System, users: list[str]) -> None:
    async def create() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            for user in users:
                await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

    asyncio.run(create())


def test_sigterm_under_load_fails_no_in_flight_call(fresh_system: System) -> None:
    system = fresh_system
    users = [f"s{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    _create_users(system, users)
    process = system.processes["profile_svc"]

    async def scenario() -> tuple[LoadResult, float, list[tuple[float, str]]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            health_changes: list[tuple[float, str]] = []

            async def watch_health() -> None:
                try:
                    async for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                        health_changes.append(
                            (time.monotonic(), health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                        )
                except grpc.aio.AioRpcError:
                    pass  # the server went away

            async def read(item: str) -> None:
                await stub.GetProfile(profile_pb2.GetProfileRequest(user=item.split("#")[0]), timeout=5)

            watcher = asyncio.create_task(watch_health())
            stop = asyncio.Event()
            reads = (f"{users[i % 20]}#{i}" for i in itertools.count())
            result = LoadResult()
            load = asyncio.create_task(
                closed_loop(itertools.takewhile(lambda _: not stop.is_set(), reads), read, 16, result)
            )
            await asyncio.sleep(1.0)
            terminated_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # Keep calling until the server is gone, then stop the load.
            while process.poll() is None:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            stop.set()
            await load
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            return result, terminated_at, health_changes

    result, terminated_at, health_changes = asyncio.run(scenario())
    exit_code = process.wait(10)
    system.processes.pop("profile_svc")
    system.start_process("profile_svc", "profile_svc")
    system.wait_healthy()

    started_before = [o for o in result.outcomes if o.started < terminated_at]
    assert len(started_before) > 100
    assert all(o.code == grpc.StatusCode.OK for o in started_before), result.error_counts()
    # Calls made after SIGTERM are served (drain) or refused; a refused call did nothing, as the count shows.
    assert set(result.error_counts()) <= {"UNAVAILABLE", "CANCELLED"}
    wait_until(
        lambda: sum(_reads_of(system, user) for user in users) == len(result.ok()),
        what="exactly the served reads counted",
    )
    assert exit_code == 0
    not_serving = [at for at, status in health_changes if status == "NOT_SERVING" and at >= terminated_at]
    assert not_serving, health_changes
    first_refusal = min((o.ended for o in result.failed()), default=float("inf"))
    assert not_serving[0] < first_refusal


def _peak_rss(pid: int, done: asyncio.Event, peak: list[float]) -> asyncio.Task:
    async def sample() -> None:
        process = psutil.Process(pid)
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            await asyncio.sleep(0.02)

    return asyncio.create_task(sample())


def test_a_burst_far_beyond_capacity_is_shed_with_bounded_memory(fresh_system: System) -> None:
    system = fresh_system
    for name in ("profile_svc", "gateway"):
        system.stop_process(name)
        system.start_process(name, name, PROFILEMESH_MAX_IN_FLIGHT="32")
    system.wait_healthy()
    user = f"o{uuid.uuid4().hex[:6]}"
    _create_users(system, [user])

    async def grpc_burst() -> tuple[dict[str, int], float]:
        done, peak = asyncio.Event(), [0.0]
        sampler = _peak_rss(system.processes["profile_svc"].pid, done, peak)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            replies = await asyncio.gather(
                *(stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10) for _ in range(3000)),
                return_exceptions=True,
            )
        done.set()
        await sampler
        codes: dict[str, int] = {}
        for reply in replies:
            name = "OK" if not isinstance(reply, grpc.aio.AioRpcError) else reply.code().name
            if name == "RESOURCE_EXHAUSTED" and "server busy" in (reply.details() or ""):
                name = "RESOURCE_EXHAUSTED (shed)"  # by profile_svc; the rest by gRPC core's backstop
            codes[name] = codes.get(name, 0) + 1
        return codes, peak[0]

    async def http_burst() -> dict[int, int]:
        statuses: dict[int, int] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get() -> None:
                async with session.get(f"{system.gateway_url}/profile/{user}") as reply:
                    body = await reply.json()
                    assert "message" in body or reply.status == 200
                    statuses[reply.status] = statuses.get(reply.status, 0) + 1

            await asyncio.gather(*(get() for _ in range(1000)))
        return statuses

    shed_before = _shed_count(system)
    codes, peak_mb = asyncio.run(grpc_burst())
    print(f"\noverload: gRPC {codes}, profile_svc peak RSS {peak_mb:.1f} MB")
    # Beyond max_in_flight profile_svc answers RESOURCE_EXHAUSTED and counts it. Beyond its backstop
    # gRPC core refuses too (RESOURCE_EXHAUSTED, or CANCELLED for streams it can't even queue),
    # before any Python runs. Either way the call did nothing, as the read count below shows.
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED (shed)", "RESOURCE_EXHAUSTED", "CANCELLED"}
    refused = ("RESOURCE_EXHAUSTED (shed)", "RESOURCE_EXHAUSTED", "CANCELLED")
    assert sum(codes.get(code, 0) for code in refused) > 0
    assert codes.get("OK", 0) > 0
    # What profile_svc shed it counted, exactly (a loaded machine may leave all refusals to gRPC core).
    assert _shed_count(system) - shed_before == codes.get("RESOURCE_EXHAUSTED (shed)", 0)
    assert peak_mb < RSS_BOUND_MB
    wait_until(lambda: _reads_of(system, user) == codes["OK"], what="the served reads to be counted")

    statuses = asyncio.run(http_burst())
    print(f"overload: REST {statuses}")
    assert set(statuses) <= {200, 429} and statuses.get(429, 0) > 0
    wait_until(lambda: _reads_of(system, user) == codes["OK"] + statuses[200], what="the served reads to be counted")


def _reads_of(system: System, user: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
        stub = reporting_pb2_grpc.ReportingServiceStub(channel)
        return stub.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=5).reads


def _shed_count(system: System) -> float:
    """profile_svc's count of GetProfile calls it shed, from its /metrics."""
    with urllib.request.urlopen(system.metrics_url("profile_svc"), timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "profilemesh_grpc_server_shed_total" and sample.labels["method"].endswith("/GetProfile")
    )
