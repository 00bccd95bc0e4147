"""WatchProfileEvents: every change once, in partition order, resumable; a slow subscriber reads from the
stream rather than being cut off; the same feed as Server-Sent Events through the gateway, which ends
streams cleanly."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import random
import signal
import statistics
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import psutil
import pytest

from common.storage import keys
from localdev.ports import free_ports
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import wait_until

Change = tuple[str, str]  # (user, type)
TIMEOUT_S = 20


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """A system of the module's own with the default retention window (the suite's is 1 s), so that
    resuming a few seconds later finds every event."""
    settings = {name: value for name, value in TEST_SETTINGS.items() if name != "PROFILEMESH_EVENTS_RETENTION_S"}
    with running_system(tmp_path_factory.mktemp("feed"), settings) as running:
        yield running


def scripted_operations(users: list[str], count: int, seed: int) -> list[Change]:
    """A valid sequence of operations: a create first, then reads, updates and deletes (and creates again)."""
    rng = random.Random(seed)
    existing: set[str] = set()
    operations: list[Change] = []
    while len(operations) < count:
        user = rng.choice(users)
        if user not in existing:
            kind = "create"
            existing.add(user)
        else:
            kind = rng.choice(("read", "read", "update", "update", "delete"))
            if kind == "delete":
                existing.discard(user)
        operations.append((user, kind))
    return operations


async def perform(stub: profile_pb2_grpc.ProfileServiceStub, user: str, kind: str) -> None:
    if kind == "create":
        await stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"n": "1"}), timeout=TIMEOUT_S)
    elif kind == "read":
        await stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S)
    elif kind == "update":
        await stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields={"n": "2"}), timeout=TIMEOUT_S)
    else:
        await stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S)


def by_partition(changes: list[Change]) -> dict[int, list[Change]]:
    grouped: dict[int, list[Change]] = defaultdict(list)
    for user, kind in changes:
        grouped[keys.partition_of(user, PARTITIONS)].append((user, kind))
    return dict(grouped)


class Subscriber:
    """Collects a WatchProfileEvents stream: its events, the last resume token, how it ended."""

    def __init__(self, stub: profile_pb2_grpc.ProfileServiceStub, **request: Any) -> None:
        self.call = stub.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest(**request))
        self.events: list[profile_pb2.ProfileEvent] = []
        self.received_at: list[float] = []
        self.token = request.get("resume_token", "")
        self.error: grpc.aio.AioRpcError | None = None
        self.task: asyncio.Task | None = None

    async def started(self) -> Subscriber:
        """Wait for the first message (a heartbeat): from then on the subscription sees every change."""
        first = await self.call.read()
        assert not first.HasField("event") and first.resume_token
        self.token = first.resume_token
        self.task = asyncio.create_task(self._collect())
        return self

    async def _collect(self, pause_s: float = 0.0) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                if message.HasField("event"):
                    self.events.append(message.event)
                    self.received_at.append(time.monotonic())
                self.token = message.resume_token
                if pause_s:
                    await asyncio.sleep(pause_s)
        except grpc.aio.AioRpcError as error:
            self.error = error

    def changes(self) -> list[Change]:
        return [(event.user, event.type) for event in self.events]

    async def wait_for(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < count:
            assert self.error is None, f"the stream failed: {self.error.code()} {self.error.details()}"
            assert time.monotonic() < deadline, f"{len(self.events)} events of {count} after {timeout_s} s"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


def test_every_change_once_in_partition_order_and_resumed_after_a_kill(system: System, unique: str) -> None:
    users = [f"{unique}-u{i}" for i in range(50)]
    operations = scripted_operations(users, 1000, seed=14)
    changes = [(user, kind) for user, kind in operations if kind != "read"]
    reads_and_deletes = [(user, kind) for user, kind in operations if kind in ("read", "delete")]

    async def scenario() -> tuple[Subscriber, Subscriber, list[Change], list[Change], Subscriber]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            whole = await Subscriber(stub, users=users).started()
            filtered = await Subscriber(stub, users=users, types=["read", "delete"]).started()
            killed = await Subscriber(stub, users=users).started()

            async def kill_mid_way() -> tuple[list[Change], str]:
                await killed.wait_for(300)
                await killed.close()  # the client goes away, mid-way through the sequence
                return killed.changes(), killed.token

            killer = asyncio.create_task(kill_mid_way())
            for user, kind in operations:
                await perform(stub, user, kind)
            before_kill, token = await killer
            resumed = await Subscriber(stub, users=users, resume_token=token).started()

            await whole.wait_for(len(changes))
            await filtered.wait_for(len(reads_and_deletes))
            await resumed.wait_for(len(changes) - len(before_kill))
            await asyncio.sleep(0.5)  # anything extra (a duplicate) would arrive by now
            for subscriber in (whole, filtered, resumed):
                await subscriber.close()
            return whole, filtered, before_kill, resumed.changes(), resumed

    whole, filtered, before_kill, after_resume, resumed = asyncio.run(scenario())
    assert 300 <= len(before_kill) < len(changes)
    assert by_partition(whole.changes()) == by_partition(changes)
    assert by_partition(filtered.changes()) == by_partition(reads_and_deletes)
    assert by_partition(before_kill + after_resume) == by_partition(changes)
    # Within a partition the ids increase, and each event says when and where it happened.
    for events in (whole.events, resumed.events):
        last: dict[int, tuple[int, int]] = {}
        for event in events:
            event_id = tuple(int(part) for part in event.id.split("-"))
            assert event.partition == keys.partition_of(event.user, PARTITIONS)
            assert event_id > last.get(event.partition, (0, 0))
            assert abs(event.time.ToMilliseconds() - event_id[0]) < 5_000
            last[event.partition] = event_id


def test_bad_requests_change_nothing_and_say_what_is_wrong(system: System) -> None:
    async def status_of(**request: Any) -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            call = profile_pb2_grpc.ProfileServiceStub(channel).WatchProfileEvents(
                profile_pb2.WatchProfileEventsRequest(**request), timeout=5
            )
            try:
                await call.read()
            except grpc.aio.AioRpcError as error:
                return error.code(), error.details()
            call.cancel()
            return grpc.StatusCode.OK, ""

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for request, words in (
        ({"resume_token": "not-a-token"}, "resume_token"),
        ({"resume_token": "v1.MC0wOjA"}, "not a token this service issued"),
        ({"types": ["read", "rename"]}, "unknown event type 'rename'"),
        ({"users": ["no spaces"]}, "user 'no spaces' is invalid"),
        ({"users": [f"u{i}" for i in range(101)]}, "at most 100"),
    ):
        code, details = asyncio.run(status_of(**request))
        assert code == invalid and words in details, (request, code, details)


def write_changes(port: int, users: list[str], rate: int, total: int, results: multiprocessing.Queue) -> None:
    """The writer: `total` changes paced at `rate` a second, in a process of its own so that the subscribers'
    CPU doesn't slow it; puts the list of acknowledged changes on `results`."""
    cycle = ("create", "update", "update", "delete")

    async def run() -> list[Change]:
        acknowledged: list[Change] = []
        in_flight = asyncio.Semaphore(64)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)

            async def write(i: int) -> None:
                # A user's next change comes a second after its last one (len(users) / rate).
                user, kind = users[i % len(users)], cycle[(i // len(users)) % len(cycle)]
                try:
                    await perform(stub, user, kind)
                    acknowledged.append((user, kind))
                except grpc.aio.AioRpcError:
                    pass  # not acknowledged: not expected either
                finally:
                    in_flight.release()

            started = time.monotonic()
            writes = []
            for i in range(total):
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                await in_flight.acquire()
                writes.append(asyncio.create_task(write(i)))
            await asyncio.gather(*writes)
        return acknowledged

    results.put(asyncio.run(run()))


def test_ten_subscribers_keep_up_with_500_changes_a_second_and_a_slow_one_reads_from_the_stream(
    system: System, unique: str
) -> None:
    rate, duration_s = 500, 20
    users = [f"{unique}-w{i}" for i in range(500)]
    total = rate * duration_s
    process = psutil.Process(system.processes["profile_svc"].pid)

    async def scenario() -> dict[str, Any]:
        target = f"127.0.0.1:{system.profile_port}"
        # The slow subscriber's client keeps gRPC's default 64 KiB receive window (no BDP probing, which would
        # grow it to megabytes that the client, not the service, would hold): it falls behind within seconds.
        async with (
            grpc.aio.insecure_channel(target) as channel,
            grpc.aio.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) as slow_channel,
        ):
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            rss_before = process.memory_info().rss
            subscribers = [await Subscriber(stub).started() for _ in range(10)]
            slow = Subscriber(profile_pb2_grpc.ProfileServiceStub(slow_channel))
            first = await slow.call.read()
            slow.token = first.resume_token
            slow.task = asyncio.create_task(slow._collect(pause_s=0.02))  # 50 messages a second at most

            rss_peak = rss_before
            results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
            writer = multiprocessing.get_context("spawn").Process(
                target=write_changes, args=(system.profile_port, users, rate, total, results)
            )
            started = time.monotonic()
            writer.start()
            try:
                while True:  # (the writer exits only once its result is read)
                    rss_peak = max(rss_peak, process.memory_info().rss)
                    try:
                        acknowledged: list[Change] = results.get_nowait()
                        break
                    except queue.Empty:
                        assert writer.is_alive() and time.monotonic() - started < 120, "the writer did not finish"
                        await asyncio.sleep(0.5)
                writer.join(10)
            finally:
                if writer.is_alive():  # a failed test stops its writer too
                    writer.terminate()
                    writer.join(10)
            write_s = time.monotonic() - started
            for subscriber in subscribers:
                await subscriber.wait_for(len(acknowledged), timeout_s=60)
            rss_peak = max(rss_peak, process.memory_info().rss)
            await asyncio.sleep(0.5)
            for subscriber in [*subscribers, slow]:
                await subscriber.close()
            return {
                "acknowledged": acknowledged,
                "subscribers": subscribers,
                "slow": slow,
                "write_s": write_s,
                "rss_before": rss_before,
                "rss_peak": rss_peak,
            }

    result = asyncio.run(scenario())
    acknowledged, subscribers, slow = result["acknowledged"], result["subscribers"], result["slow"]
    assert len(acknowledged) >= 0.99 * total
    expected = Counter(acknowledged)
    for subscriber in subscribers:
        mine = [change for change in subscriber.changes() if change[0].startswith(f"{unique}-w")]
        assert subscriber.error is None
        # Every acknowledged change (a write that timed out may have happened too: then it is there as well).
        assert expected <= Counter(mine)
        assert by_partition(mine) == by_partition(subscribers[0].changes())
    # The slow one overflowed its queue long ago, and reads from the stream instead: not cut off, and what it
    # got is, partition by partition, the start of what the others got.
    assert slow.error is None, slow.error
    assert 0 < len(slow.events) < len(acknowledged)
    everything = by_partition(subscribers[0].changes())
    for partition, changes in by_partition(slow.changes()).items():
        assert changes == everything[partition][: len(changes)], partition
    growth_mb = (result["rss_peak"] - result["rss_before"]) / 2**20
    print(
        f"\n{total} changes at {total / result['write_s']:.0f}/s (paced at {rate}/s) in {result['write_s']:.1f} s, 10 subscribers + 1 slow: profile_svc RSS "
        f"{result['rss_before'] / 2**20:.0f} MB before, {result['rss_peak'] / 2**20:.0f} MB at peak; "
        f"the slow one, reading from the stream, got {len(slow.events)} events"
    )
    assert growth_mb < 100


# ---------------------------------------------------------------- the same feed as Server-Sent Events


async def read_sse(response: aiohttp.ClientResponse) -> dict[str, str] | None:
    """The next event of a text/event-stream (fields by name; comments skipped), or None at its end."""
    fields: dict[str, str] = {}
    while True:
        line = await response.content.readline()
        if not line:
            return None
        text = line.decode().rstrip("\n")
        if not text:
            if fields:
                return fields
            continue
        if text.startswith(":"):
            continue
        name, _, value = text.partition(":")
        fields[name] = value.removeprefix(" ")


def test_the_feed_as_server_sent_events_resumes_and_cancels_upstream(system: System, unique: str) -> None:
    users = [f"{unique}-s{i}" for i in range(50)]
    operations = scripted_operations(users, 1000, seed=4)
    changes = [(user, kind) for user, kind in operations if kind != "read"]
    url = f"{system.gateway_url}/profile/events?" + "&".join(f"users={user}" for user in users)
    log = system.log_dir / "profile_svc.log"

    async def scenario() -> tuple[list[dict], list[dict], float]:
        async with (
            aiohttp.ClientSession() as session,
            grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel,
        ):
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            async with session.get(url) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
                heartbeat = await read_sse(response)
                assert heartbeat is not None and "event" not in json.loads(heartbeat["data"])
                for user, kind in operations:
                    await perform(stub, user, kind)
                received = []
                while len(received) < len(changes):
                    event = await asyncio.wait_for(read_sse(response), 30)
                    assert event is not None
                    if "event" in json.loads(event["data"]):
                        received.append(event)
            # Resume from the 400th event, as a browser does after a dropped connection.
            async with session.get(url, headers={"Last-Event-ID": received[399]["id"]}) as response:
                assert response.status == 200
                resumed = []
                while len(resumed) < len(changes) - 400:
                    event = await asyncio.wait_for(read_sse(response), 30)
                    assert event is not None
                    if "event" in json.loads(event["data"]):
                        resumed.append(event)
                ended_before = log.read_text().count("WatchProfileEvents ended after")
                response.close()  # the HTTP connection goes away
                closed_at = time.monotonic()
            await asyncio.to_thread(
                wait_until,
                lambda: log.read_text().count("WatchProfileEvents ended after") > ended_before,
                5,
                0.02,
                "profile_svc to see its stream cancelled",
            )
            return received, resumed, time.monotonic() - closed_at

    received, resumed, cancel_s = asyncio.run(scenario())

    def as_changes(events: list[dict]) -> list[Change]:
        return [(data["event"]["user"], data["event"]["type"]) for data in (json.loads(e["data"]) for e in events)]

    assert by_partition(as_changes(received)) == by_partition(changes)
    assert all(json.loads(e["data"])["resumeToken"] == e["id"] for e in received)
    assert by_partition(as_changes(received[:400] + resumed)) == by_partition(changes)
    assert cancel_s < 1.0, f"profile_svc saw the cancellation {cancel_s:.2f} s after the connection closed"


def test_gateway_sigterm_ends_every_open_stream_with_a_retry_hint(system: System) -> None:
    port = free_ports(1)[0]
    gateway = system.start_process("gateway-sigterm", "gateway", PROFILEMESH_GATEWAY_LISTEN=f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(base), 30, what="the extra gateway")
    paths = [f"/profile/events?types=delete&users=nobody{i}" for i in range(10)] + [
        f"/reporting/profileStats/{i + 1}/stream" for i in range(10)
    ]

    async def scenario() -> tuple[list[dict | None], list[float], float]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            responses = [await session.get(base + path) for path in paths]
            for response in responses:
                assert response.status == 200
                assert await read_sse(response) is not None  # the stream is open and flowing

            async def last_event(response: aiohttp.ClientResponse) -> tuple[dict | None, float]:
                final = None
                while (event := await read_sse(response)) is not None:
                    final = event
                return final, time.monotonic()

            waiting = [asyncio.create_task(last_event(response)) for response in responses]
            signalled_at = time.monotonic()
            gateway.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*waiting)
            for response in responses:
                response.release()
            return [final for final, _ in results], [at - signalled_at for _, at in results], signalled_at

    finals, ended_after, _ = asyncio.run(scenario())
    exit_code = gateway.wait(15)
    system.processes.pop("gateway-sigterm")
    for final in finals:
        assert final is not None and final.get("event") == "end" and final.get("retry") == "1000", final
    assert max(ended_after) < 3.0, f"streams ended {statistics.median(ended_after):.2f} s (median) after SIGTERM"
    assert exit_code == 0


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False
