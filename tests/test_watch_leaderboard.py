"""WatchTopProfiles and the live leaderboard page (in a real Chromium), stream limits, drain, and what a
subscriber gets when the events after its token were trimmed. On a system of the module's own: empty
statistics, a one-second retention window and room for only a few streams."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from common.storage import keys
from localdev.ports import free_ports
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import http_call, wait_for_every_wake_flag, wait_until
from tests.test_seed_walkthrough import SEED_USERS

MAX_STREAMS = 6
SCREENSHOT = Path(__file__).parent / "out" / "leaderboard.png"  # kept from the run, ignored by git
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,800",
)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = {
        **TEST_SETTINGS,
        "PROFILEMESH_EVENTS_RETENTION_S": "1",
        "PROFILEMESH_MAX_STREAMS": str(MAX_STREAMS),
        "PROFILEMESH_STREAM_CLIENT_SHARE_PERCENT": "100",  # the whole pool from one address (tests/test_fair_streams.py: shares)
        "PROFILEMESH_WATCH_INTERVAL_MS": "250",
    }
    with running_system(tmp_path_factory.mktemp("board"), settings) as running:
        wait_for_every_wake_flag(running, PARTITIONS)  # the freshness bounds hold once the aggregator listens
        yield running


def ranking(message: reporting_pb2.WatchTopProfilesResponse) -> list[tuple[str, int]]:
    return [(row.user, row.score) for row in message.results]


def _totals(message: reporting_pb2.WatchTopProfilesResponse) -> tuple[int, int, int, int]:
    totals = message.totals
    return totals.create, totals.read, totals.update, totals.delete


def test_watch_top_profiles_follows_the_seed_walkthrough(board: System) -> None:
    port = board.gateway_port
    final = [("ana", 8), ("roberto", 2), ("akua", 1)]
    final_totals = (4, 12, 0, 1)  # create, read, update, delete

    def walkthrough() -> float:
        for user, fields in SEED_USERS.items():
            assert http_call(port, "POST", f"/profile/{user}", fields)[0] == 201
        assert http_call(port, "GET", "/profile/zach")[0] == 200
        assert http_call(port, "DELETE", "/profile/zach")[0] == 200
        for user, reads in (("ana", 8), ("roberto", 2), ("akua", 1)):
            for _ in range(reads):
                assert http_call(port, "GET", f"/profile/{user}")[0] == 200
        return time.monotonic()  # the last read was acknowledged

    async def scenario() -> tuple[list[tuple[float, reporting_pb2.WatchTopProfilesResponse]], float, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{board.reporting_port}") as channel:
            call = reporting_pb2_grpc.ReportingServiceStub(channel).WatchTopProfiles(
                reporting_pb2.WatchTopProfilesRequest(limit=3)
            )
            messages: list[tuple[float, reporting_pb2.WatchTopProfilesResponse]] = []

            async def collect() -> None:
                while (message := await call.read()) is not grpc.aio.EOF:
                    messages.append((time.monotonic(), message))

            collector = asyncio.create_task(collect())
            await asyncio.sleep(1.0)  # the first snapshot, then nothing: nothing changes
            assert len(messages) == 1 and ranking(messages[0][1]) == []
            started = time.monotonic()
            last_read = await asyncio.to_thread(walkthrough)
            deadline = time.monotonic() + 10
            # The top 3 and the totals, which settle apart (the partitions of the last reads and of the
            # creates and the delete are applied on their own).
            while not messages or (ranking(messages[-1][1]), _totals(messages[-1][1])) != (final, final_totals):
                assert time.monotonic() < deadline, [(ranking(m), _totals(m)) for _, m in messages]
                await asyncio.sleep(0.01)
            count = len(messages)
            await asyncio.sleep(2.0)  # nothing changes any more: nothing is sent
            assert len(messages) == count
            call.cancel()
            await asyncio.gather(collector, return_exceptions=True)
            return messages, last_read, started

    messages, last_read, started = asyncio.run(scenario())
    final_at, final_message = messages[-1]
    assert ranking(final_message) == final
    assert final_at - last_read < 1.0, f"the final top 3 came {final_at - last_read:.2f} s after the last read"
    assert _totals(final_message) == final_totals
    # Coalesced: at most one message per 250 ms interval (plus the first).
    assert len(messages) <= 2 + (final_at - started) / 0.25


def test_live_leaderboard_page_in_chromium_survives_a_gateway_restart(board: System) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = board.gateway_port
    reader = "page-reader"
    assert http_call(port, "POST", f"/profile/{reader}", {"email": "r@example.com"})[0] == 201

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={board.log_dir.parent / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:

        def board_rows() -> list[tuple[str, str]]:
            """(user, reads) as the page shows them, read in one go (the page redraws the table on each update)."""
            rows = driver.execute_script(
                "return [...document.querySelectorAll('#leaderboard tr')].map(r => [...r.cells].map(c => c.textContent))"
            )
            return [(cells[1], cells[2]) for cells in rows]

        def reads_shown() -> str | None:
            return dict(board_rows()).get(reader)

        def read_profile(times: int) -> None:
            for _ in range(times):
                assert http_call(port, "GET", f"/profile/{reader}")[0] == 200

        driver.get(f"{board.gateway_url}/dashboard")
        wait_until(
            lambda: driver.find_element(By.ID, "status").get_attribute("class") == "live",
            15,
            what="the page to go live",
        )
        driver.execute_script("window.loadedOnce = true")  # gone if the page reloads

        read_profile(20)
        wait_until(lambda: reads_shown() == "20", 10, what="the page to show 20 reads")
        assert int(driver.find_element(By.ID, "total-read").text) >= 20
        assert len(board_rows()) <= 10

        assert board.stop_process("gateway") == 0
        wait_until(
            lambda: driver.find_element(By.ID, "status").get_attribute("class") == "reconnecting",
            10,
            what="the page to notice the gateway is gone",
        )
        board.start_process("gateway", "gateway")
        wait_until(board.gateway_ready, 30, what="the gateway to come back")

        read_profile(5)
        wait_until(lambda: reads_shown() == "25", 20, what="the page to show 25 reads after the restart")
        assert driver.execute_script("return window.loadedOnce") is True
        SCREENSHOT.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()


def test_resuming_after_the_retention_window_answers_out_of_range(board: System) -> None:
    client = board.cluster.client(decode_responses=True)
    user = "trimmed-soon"
    stream = keys.events_key(keys.partition_of(user, PARTITIONS))

    async def first_messages(stub: profile_pb2_grpc.ProfileServiceStub, token: str, count: int) -> list:
        call = stub.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(resume_token=token, users=[user]))
        try:
            return [await call.read() for _ in range(count)]
        finally:
            call.cancel()

    async def scenario() -> tuple[list, grpc.aio.AioRpcError]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{board.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            (start,) = await first_messages(stub, "", 1)
            # Within the window, the token resumes: a heartbeat, then both changes. Resumed before they are made:
            # the window is 1 s from their aggregation, less than a resume can take at 4,096 partitions.
            resumed = stub.WatchProfileEvents(
                profile_pb2.WatchProfileEventsRequest(resume_token=start.resume_token, users=[user])
            )
            try:
                within = [await resumed.read()]
                await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"a": "1"}), timeout=5)
                await stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields={"a": "2"}), timeout=5)
                within += [await resumed.read() for _ in range(2)]
            finally:
                resumed.cancel()
            create_id = within[1].event.id
            # Aggregated, then older than the 1 s window: the aggregator's maintenance trims the create (it
            # keeps the last entry it has read, here the update).
            await asyncio.to_thread(
                wait_until,
                lambda: client.xrange(stream, create_id, create_id) == [],
                20,
                0.2,
                "the create to be trimmed",
            )
            # A token past the trimmed entries still resumes: nothing after it is gone.
            (after_trim,) = await first_messages(stub, within[-1].resume_token, 1)
            assert not after_trim.HasField("event")
            try:
                await first_messages(stub, start.resume_token, 2)
            except grpc.aio.AioRpcError as error:
                return within, error
            raise AssertionError("resuming from a trimmed token did not fail")

    try:
        within, error = asyncio.run(scenario())
    finally:
        client.close()
    assert [(m.event.user, m.event.type) for m in within[1:]] == [(user, "create"), (user, "update")]
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "trimmed" in error.details() and "without a token" in error.details()


def test_stream_limits_idle_and_maximum_lifetimes_and_drain(board: System) -> None:
    async def scenario() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{board.reporting_port}") as channel:
            stub = reporting_pb2_grpc.ReportingServiceStub(channel)
            calls = [stub.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=5)) for _ in range(MAX_STREAMS)]
            for call in calls:
                await call.read()
            refused = stub.WatchTopProfiles(reporting_pb2.WatchTopProfilesRequest(limit=5))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await refused.read()
            assert (
                raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                and "too many streams" in raised.value.details()
            )
            for call in calls:
                call.cancel()
        # The gateway has the same bound of its own: 429 beyond it.
        async with aiohttp.ClientSession() as session:
            url = f"{board.gateway_url}/reporting/profileStats/5/stream"
            await asyncio.sleep(0.5)  # the services have seen the cancellations above
            open_streams = [await session.get(url) for _ in range(MAX_STREAMS)]
            assert [r.status for r in open_streams] == [200] * MAX_STREAMS
            async with session.get(url) as refused_http:
                assert refused_http.status == 429 and "too many streams" in (await refused_http.json())["message"]
            for response in open_streams:
                response.close()

    asyncio.run(scenario())

    # A reporting_svc whose streams may idle for 1 s, one whose streams live at most 2 s, and a profile_svc to drain.
    reporting_port, short_lived_port, profile_port = free_ports(3)
    board.start_process(
        "reporting-idle",
        "reporting_svc",
        PROFILEMESH_REPORTING_LISTEN=f"127.0.0.1:{reporting_port}",
        PROFILEMESH_STREAM_IDLE_S="1",
    )
    board.start_process(
        "reporting-max",
        "reporting_svc",
        PROFILEMESH_REPORTING_LISTEN=f"127.0.0.1:{short_lived_port}",
        PROFILEMESH_STREAM_MAX_S="2",
        PROFILEMESH_STREAM_IDLE_S="60",
    )
    draining = board.start_process(
        "profile-drain", "profile_svc", PROFILEMESH_PROFILE_LISTEN=f"127.0.0.1:{profile_port}"
    )
    try:
        wait_until(
            lambda: all(
                board.grpc_status(port) == "SERVING" for port in (reporting_port, short_lived_port, profile_port)
            ),
            30,
        )

        async def ended_after(port: int) -> tuple[grpc.aio.AioRpcError, float]:
            """How a leaderboard stream with nothing new to say ends, and after how long."""
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                # Timed from before the call: the server's lifetimes start when it gets the call, and the first
                # message may take a while to arrive on a loaded machine.
                opened = time.monotonic()
                call = reporting_pb2_grpc.ReportingServiceStub(channel).WatchTopProfiles(
                    reporting_pb2.WatchTopProfilesRequest(limit=3)
                )
                await call.read()
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await asyncio.wait_for(call.read(), 10)
                return ended.value, time.monotonic() - opened

        longest, longest_s = asyncio.run(ended_after(short_lived_port))
        assert longest.code() == grpc.StatusCode.UNAVAILABLE and "maximum lifetime of 2 s" in longest.details()
        assert 1.9 < longest_s < 6

        async def idle_and_drain() -> tuple[grpc.aio.AioRpcError, float, grpc.aio.AioRpcError, float]:
            idle, idle_s = await ended_after(reporting_port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{profile_port}") as channel:
                call = profile_pb2_grpc.ProfileServiceStub(channel).WatchProfileEvents(
                    profile_pb2.WatchProfileEventsRequest()
                )
                first = await call.read()
                signalled = time.monotonic()
                draining.send_signal(signal.SIGTERM)
                with pytest.raises(grpc.aio.AioRpcError) as drained:
                    await asyncio.wait_for(call.read(), 10)
                assert dict(drained.value.trailing_metadata())["resume-token"] == first.resume_token
                return idle, idle_s, drained.value, time.monotonic() - signalled

        idle, idle_s, drained, drain_s = asyncio.run(idle_and_drain())
        assert idle.code() == grpc.StatusCode.UNAVAILABLE and "no event for 1 s" in idle.details()
        assert 0.9 < idle_s < 5
        assert drained.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in drained.details()
        assert drain_s < 1.0  # at SIGTERM, before the drain period (300 ms here) ends
        assert draining.wait(15) == 0
    finally:
        board.stop_process("reporting-idle")
        board.stop_process("reporting-max")
        board.stop_process("profile-drain")
