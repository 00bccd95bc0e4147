"""Fair streams: one client address holds at most its share of the stream slots, at the gateway (per HTTP
client, by peer address or, behind a trusted proxy, by X-Forwarded-For) and at the services (per client the
gateway names; per gRPC peer otherwise). Clients on distinct loopback addresses (127.0.0.2, .3; a "proxy" on .4)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import grpc
import pytest

from localdev.ports import free_ports
from localdev.system import System
from localdev.waiting import answers_ok
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import TEST_SETTINGS, running_system
from tests.helpers import wait_until

MAX_STREAMS = 8
SHARE = 2  # 25 % of 8
PROXY = "127.0.0.4"
PATH = "/reporting/profileStats/5/stream"  # answers at once with a snapshot


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = {
        **TEST_SETTINGS,
        "PROFILEMESH_MAX_STREAMS": str(MAX_STREAMS),
        "PROFILEMESH_STREAM_CLIENT_SHARE_PERCENT": "25",
        # The gateway trusts the "proxy"; the services trust the gateway (127.0.0.1).
        "PROFILEMESH_TRUSTED_PROXIES": f"127.0.0.1,{PROXY}",
    }
    with running_system(tmp_path_factory.mktemp("fair"), settings) as running:
        yield running


async def _open(session: aiohttp.ClientSession, url: str, forwarded: str | None = None) -> aiohttp.ClientResponse:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return await session.get(url, headers=headers)


def _session(address: str) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20))


async def _refused(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    """A refusal's status, Retry-After and reasons; an opened stream just its status (and it is closed)."""
    if response.status == 200:
        response.close()
        return 200, "", ""
    body = await response.json()
    reasons = [detail.get("reason") for detail in body.get("details", [])]
    response.release()
    return response.status, response.headers.get("Retry-After", ""), ",".join(filter(None, reasons))


def test_one_address_gets_its_share_and_another_still_gets_its_streams(fair: System) -> None:
    url = fair.gateway_url + PATH

    async def scenario() -> None:
        async with _session("127.0.0.2") as first, _session("127.0.0.3") as second, _session(PROXY) as proxy:
            held = [await _open(first, url) for _ in range(SHARE)]
            assert [r.status for r in held] == [200] * SHARE
            status, retry_after, reason = await _refused(await _open(first, url))
            assert (status, reason) == (429, "TOO_MANY_STREAMS_FROM_CLIENT") and int(retry_after) >= 1
            # An untrusted peer can't name another client to get more.
            status, _, reason = await _refused(await _open(first, url, forwarded="198.51.100.9"))
            assert (status, reason) == (429, "TOO_MANY_STREAMS_FROM_CLIENT")
            # A second address still opens its streams (and the service, told whom each is for, lets them).
            others = [await _open(second, url) for _ in range(SHARE)]
            assert [r.status for r in others] == [200] * SHARE
            # Through the trusted proxy: a share per forwarded client, whatever the client put left of it.
            behind = [await _open(proxy, url, forwarded=f"1.1.1.{i}, 198.51.100.1") for i in range(SHARE)]
            assert [r.status for r in behind] == [200] * SHARE
            status, retry_after, reason = await _refused(await _open(proxy, url, forwarded="198.51.100.1"))
            assert (status, reason) == (429, "TOO_MANY_STREAMS_FROM_CLIENT") and retry_after
            another = [await _open(proxy, url, forwarded="198.51.100.2") for _ in range(SHARE)]
            assert [r.status for r in another] == [200] * SHARE
            for response in [*held, *others, *behind, *another]:
                response.close()

    asyncio.run(scenario())


def test_a_service_gives_one_grpc_peer_its_share(fair: System) -> None:
    """A direct gRPC client (not the gateway naming a client) is one client: RESOURCE_EXHAUSTED beyond its share."""

    async def scenario() -> None:
        await asyncio.sleep(0.5)  # the streams of the test before have ended at the service
        async with grpc.aio.insecure_channel(f"127.0.0.1:{fair.reporting_port}") as channel:
            stub = reporting_pb2_grpc.ReportingServiceStub(channel)
            calls = [stub.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=5)) for _ in range(SHARE)]
            for call in calls:
                await call.read()
            refused = stub.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=5))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await refused.read()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many streams from one client" in (raised.value.details() or "")
            # Named by a trusted peer, another client has a share of its own.
            other = stub.WatchTopProfiles(
                reporting_pb2.WatchTopProfilesRequest(limit=5), metadata=[("x-forwarded-for", "198.51.100.7")]
            )
            await other.read()
            for call in [*calls, other]:
                call.cancel()

    asyncio.run(scenario())


def test_the_rate_limit_counts_the_same_client(fair: System) -> None:
    """The rate limit's client is the streams' (one helper): behind the trusted proxy each forwarded client has a
    bucket of its own; an untrusted peer's X-Forwarded-For is ignored."""
    port = free_ports(1)[0]
    fair.start_process(
        "gateway-rate-limited",
        "gateway",
        PROFILEMESH_GATEWAY_LISTEN=f"127.0.0.1:{port}",
        PROFILEMESH_RATE_LIMIT_PER_S="1",
        PROFILEMESH_RATE_LIMIT_BURST="2",
    )
    url = f"http://127.0.0.1:{port}/reporting/operationTotals"

    async def statuses(session: aiohttp.ClientSession, forwarded: str | None, count: int) -> list[int]:
        codes = []
        for _ in range(count):
            async with session.get(url, headers={"X-Forwarded-For": forwarded} if forwarded else {}) as response:
                codes.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
        return codes

    async def scenario() -> None:
        async with _session(PROXY) as proxy, _session("127.0.0.2") as direct:
            first = await statuses(proxy, "198.51.100.1", 4)
            assert first[:2] == [200, 200] and 429 in first, first
            assert (await statuses(proxy, "198.51.100.2", 2)) == [200, 200]  # another client behind the proxy
            spoofed = await statuses(direct, "198.51.100.3", 4)  # counted as 127.0.0.2, whatever it claims
            assert spoofed[:2] == [200, 200] and 429 in spoofed, spoofed
            assert 429 in await statuses(direct, "198.51.100.4", 1)

    try:
        wait_until(lambda: answers_ok(f"http://127.0.0.1:{port}/readyz"), what="the rate-limited gateway")
        asyncio.run(scenario())
    finally:
        fair.stop_process("gateway-rate-limited")
