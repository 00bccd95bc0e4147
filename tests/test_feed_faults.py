"""The change feed under the faults that used to make it skip events silently (issue 18), each through the
real service and, for tokens and the catch-up, through the gateway's Server-Sent Events as well:
a tail reader stalled past the retention window, a lossy failover under a live subscription (with and
without ids handed out again), a filtered subscriber far behind under load, and forged tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis
from redis.cluster import RedisCluster

from common.rpc.streams import StreamLimits
from common.storage import keys
from common.storage.cluster import Cluster
from localdev.system import System
from profile_svc.events_feed import CATCH_UP_PAGE, TOKEN_PREFIX, Anchor, EventsFeed, Tokens, event_filter
from profile_svc.feed_checkpoints import Version
from profile_svc.profiles import script_keys
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import FunctionCall, run_scenario, status_details, wait_until

PROFILE_SCRIPTS = Path(__file__).parent.parent / "profile_svc" / "scripts"
CHAIN = Version("0123456789abcdef", 7)  # a recorded state no process ever recorded


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Two profile_svc replicas (one to stall, one to write through), retention 1 s, heartbeats every second."""
    settings = {**TEST_SETTINGS, "PROFILEMESH_STREAM_HEARTBEAT_S": "1"}
    with running_system(tmp_path_factory.mktemp("feed-faults"), settings, replicas=2) as running:
        yield running


@pytest.fixture(scope="module")
def admin(system: System) -> Iterator[RedisCluster]:
    client = system.cluster.client(decode_responses=True)
    yield client
    client.close()


class Reader:
    """Reads tokens back as a replica does (EventsFeed.resume, which reads the states a token names from the
    cluster): where a token stands, per partition."""

    def __init__(self, system: System) -> None:
        self.cluster = Cluster(system.client_settings("profile_svc"))
        self.feed = EventsFeed(self.cluster, PARTITIONS, self.cluster.settings.stream_queue)

    async def start(self) -> None:
        await self.cluster.verify_partitions()

    async def offsets(self, token: str) -> list[int]:
        return [anchor.n for anchor in (await self.feed.resume(token)).anchors]

    async def close(self) -> None:
        await self.cluster.close()


def user_in(partition: int, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if keys.partition_of(f"{prefix}{i}", PARTITIONS) == partition)


class Watch:
    """A WatchProfileEvents call read in the background: events, the last token, how it ended."""

    def __init__(self, port: int, **request: Any) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = profile_pb2_grpc.ProfileServiceStub(self.channel).WatchProfileEvents(
            profile_pb2.WatchProfileEventsRequest(**request)
        )
        self.events: list[profile_pb2.ProfileEvent] = []
        self.token = ""
        self.tokens: list[tuple[float, str]] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                if message.HasField("event"):
                    self.events.append(message.event)
                self.token = message.resume_token
                self.tokens.append((time.monotonic(), message.resume_token))
        except grpc.aio.AioRpcError as error:
            self.error = error

    async def until(self, condition: Any, timeout_s: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; error {self.error}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.channel.close()


def reason_of(error: grpc.aio.AioRpcError) -> str:
    return str(status_details(error)["ErrorInfo"].reason)


def write(port: int, user: str, kinds: list[str]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for i, kind in enumerate(kinds):
            if kind == "create":
                stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"v": str(i)}), timeout=10)
            elif kind == "update":
                stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields={"v": str(i)}), timeout=10)
            elif kind == "delete":
                stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=10)
            else:
                stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=10)


# ---------------------------------------------------------------- a tail reader stalled past retention


def test_a_tail_reader_stalled_while_its_next_events_were_trimmed_ends_with_events_trimmed(
    system: System, admin: RedisCluster
) -> None:
    stalled, other = system.processes["profile_svc"], system.profile_ports[1]
    user = user_in(3, "stall")
    stream = keys.events_key(3)

    async def scenario() -> Watch:
        watch = Watch(system.profile_port)
        await watch.until(lambda: watch.token, what="the first heartbeat")
        write(other, user, ["create"])
        await watch.until(lambda: len(watch.events) == 1, what="the create")
        stalled.send_signal(signal.SIGSTOP)
        try:
            # Written through the other replica, aggregated, and trimmed (retention 1 s) past the create.
            write(other, user, ["update"] * 20 + ["read"])
            added = int(admin.xinfo_stream(stream)["entries-added"])
            wait_until(
                lambda: int(admin.hget(keys.trimmed_key(3), "n") or 0) >= added - 1,
                what="the updates to be trimmed",
            )
        finally:
            stalled.send_signal(signal.SIGCONT)
        await watch.until(lambda: watch.error is not None, what="the stream to end")
        return watch

    watch = run_scenario(_closing(scenario()))
    assert watch.error is not None and watch.error.code() == grpc.StatusCode.OUT_OF_RANGE, watch.error
    assert reason_of(watch.error) == "EVENTS_TRIMMED"
    # Nothing after the gap was passed off as following on: the create is all it saw of the user.
    assert [(e.user, e.type) for e in watch.events if e.user == user] == [(user, "create")]


async def _closing(scenario: Any) -> Watch:
    watch: Watch = await scenario
    await watch.close()
    return watch


# ---------------------------------------------------------------- a lossy failover under a live subscription


@pytest.mark.parametrize("ids_reused", [False, True], ids=["new-ids", "ids-handed-out-again"])
def test_a_lossy_failover_under_a_live_subscription_ends_with_history_changed(
    system: System, admin: RedisCluster, ids_reused: bool
) -> None:
    """A promoted replica that lacked the stream's last entries, simulated by restoring an earlier copy of the
    stream and its trim record; with ids_reused, the new primary's clock is behind the lost entries, so the
    next events get their ids again (the stream's last id is set ahead of the clock beforehand)."""
    partition = 5 if ids_reused else 6
    user = user_in(partition, f"lossy{int(ids_reused)}-")
    stream, record = keys.events_key(partition), keys.trimmed_key(partition)
    node = admin.get_node_from_key(stream)
    primary = redis.Redis(host=node.host, port=node.port, **system.cluster._client_options("profilemesh-admin"))
    system.stop_process("aggregator_svc")  # nothing acknowledges or trims meanwhile, as in a failover's seconds
    try:

        async def scenario() -> tuple[Watch, str, Watch, Watch]:
            write(system.profile_port, user, ["create"])
            if ids_reused:
                ahead_ms = int(time.time() * 1000) + 60_000
                admin.execute_command("XSETID", stream, f"{ahead_ms}-0")
            watch = Watch(system.profile_port, types=["create", "read", "update", "delete"])
            await watch.until(lambda: watch.token, what="the first heartbeat")
            write(system.profile_port, user, ["read", "update"])
            await watch.until(lambda: len(watch.events) == 2, what="the first two events")
            kept = watch.token
            saved = primary.dump(stream)
            saved_record = primary.dump(record)
            write(system.profile_port, user, ["update", "read", "update"])  # these are lost
            await watch.until(lambda: len(watch.events) == 5, what="the events about to be lost")
            lost = watch.token
            pipe = primary.pipeline(transaction=True)
            pipe.restore(stream, 0, saved, replace=True)
            if saved_record is not None:
                pipe.restore(record, 0, saved_record, replace=True)
            else:
                pipe.delete(record)
            pipe.execute()
            write(system.profile_port, user, ["update", "update", "update", "read"])  # after the failover
            await watch.until(lambda: watch.error is not None, what="the live stream to end")
            resumed_kept = Watch(system.profile_port, resume_token=kept, types=["create", "read", "update"])
            await resumed_kept.until(lambda: len(resumed_kept.events) >= 4, what="the resume from before the loss")
            resumed_lost = Watch(system.profile_port, resume_token=lost)
            await resumed_lost.until(lambda: resumed_lost.error is not None, what="the resume from the lost part")
            for each in (watch, resumed_kept, resumed_lost):
                await each.close()
            return watch, kept, resumed_kept, resumed_lost

        watch, _, resumed_kept, resumed_lost = run_scenario(scenario())
    finally:
        primary.close()
        system.start_process("aggregator_svc", "aggregator_svc")
    assert watch.error is not None and watch.error.code() == grpc.StatusCode.OUT_OF_RANGE, watch.error
    assert reason_of(watch.error) == "EVENTS_HISTORY_CHANGED"
    # The live subscriber saw the events that were lost, and nothing of the new history passed as following on.
    assert [e.type for e in watch.events if e.user == user] == ["read", "update", "update", "read", "update"]
    # A token from before the loss is still in the history: it resumes into the events written since.
    assert resumed_kept.error is None
    assert [e.type for e in resumed_kept.events if e.user == user][:4] == ["update", "update", "update", "read"]
    assert resumed_lost.error is not None and resumed_lost.error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert reason_of(resumed_lost.error) == "EVENTS_HISTORY_CHANGED"


# ---------------------------------------------------------------- a filtered subscriber far behind, under load

BEHIND = 400_000
RATE = 3_000


def _append_reads(admin: RedisCluster, system: System, users: list[str], per_user: int, rate: float = 0) -> None:
    """Read events through the real get_profile script, pipelined per partition's primary: the backlog, or
    (with `rate`) a steady load of that many events a second in tenths of a second."""
    get_profile = FunctionCall(PROFILE_SCRIPTS / "get_profile.lua")  # loaded by the system's start (migrate)
    options = system.cluster._client_options("profilemesh-admin")
    by_node: dict[tuple[str, int], list[str]] = {}
    for user in users:
        node = admin.get_node_from_key(keys.profile_key(user, PARTITIONS))
        by_node.setdefault((node.host, node.port), []).append(user)
    clients = {address: redis.Redis(host=address[0], port=address[1], **options) for address in by_node}
    try:
        step = max(1, int(rate / 10)) if rate else 2_000
        remaining = per_user * len(users)
        while remaining > 0:
            started = time.monotonic()
            for address, mine in by_node.items():
                pipe = clients[address].pipeline(transaction=False)
                for i in range(min(step, remaining) * len(mine) // len(users) or 1):
                    user = mine[i % len(mine)]
                    pipe.execute_command(*get_profile.command(script_keys(user, PARTITIONS), [user]))
                pipe.execute()
            remaining -= step
            if rate:
                time.sleep(max(0.0, started + step / rate - time.monotonic()))
    finally:
        for client in clients.values():
            client.close()


def test_filtered_subscribers_400000_entries_behind_catch_up_under_3000_events_a_second(
    system: System, admin: RedisCluster
) -> None:
    """Two at once from the same token, one over gRPC and one over SSE, each filtering out everything."""
    users = [f"backlog-{partition}" for partition in range(PARTITIONS * 4)]
    for user in users:
        admin.hset(keys.profile_key(user, PARTITIONS), "v", "1")
    system.stop_process("aggregator_svc")  # nothing trims the backlog meanwhile (and its CPU stays out of it)
    load_stop = threading.Event()
    try:

        async def scenario() -> dict[str, dict[str, Any]]:
            start = Watch(system.profile_port, users=["nobody"])
            await start.until(lambda: start.token, what="a token from before the backlog")
            token = start.token
            await start.close()
            _append_reads(admin, system, users, -(-BEHIND // len(users)))  # at least BEHIND in all

            def load() -> None:
                while not load_stop.is_set():
                    _append_reads(admin, system, users, RATE // len(users), rate=RATE)

            loader = threading.Thread(target=load, daemon=True)
            loader.start()

            reader = Reader(system)
            await reader.start()

            async def behind(token: str) -> int:
                tails = [int(admin.xinfo_stream(keys.events_key(p))["entries-added"]) for p in range(PARTITIONS)]
                return sum(tail - mine for tail, mine in zip(tails, await reader.offsets(token), strict=True))

            try:
                grpc_result, sse_result = await asyncio.gather(
                    _grpc_catch_up(system, token, behind), _sse_catch_up(system, token, behind)
                )
                for result in (grpc_result, sse_result):
                    result["progress"] = [sum(await reader.offsets(token)) for _, token in result["tokens"]]
            finally:
                await reader.close()
            return {"grpc": grpc_result, "sse": sse_result}

        results = run_scenario(scenario())
    finally:
        load_stop.set()
        system.start_process("aggregator_svc", "aggregator_svc")
    for via, result in results.items():
        tokens = result["tokens"]
        assert result["error"] is None, (via, result["error"])
        # Tokens came with the catch-up, each further on than the one before (how many depends on how fast it
        # went: at least the first and one past the backlog; a heartbeat after every page is shown in-process
        # by test_every_page_of_a_catch_up_can_carry_a_heartbeat_with_an_advancing_token).
        progress = result["progress"]
        assert len(progress) >= 2 and progress == sorted(progress), via
        assert progress[-1] > progress[0] + BEHIND, via
        assert result["final_behind"] < RATE, (via, result)  # level with the tail, give or take a second of writes
        print(
            f"\n{via}: a subscriber filtering out everything, {BEHIND:,} entries behind while {RATE:,} events/s "
            f"arrived, caught up in {result['caught_up_s']:.1f} s ({len(tokens)} heartbeats on the way)"
        )


async def _grpc_catch_up(system: System, token: str, behind: Any) -> dict[str, Any]:
    started = time.monotonic()
    watch = Watch(system.profile_port, users=["nobody"], types=["read"], resume_token=token)
    deadline = time.monotonic() + 120
    final = BEHIND  # how far behind it was when last measured, at the moment it was measured
    while time.monotonic() < deadline and watch.error is None:
        await asyncio.sleep(0.5)
        if watch.tokens:
            final = await behind(watch.tokens[-1][1])
            if final < RATE:
                break
    caught_up_s = time.monotonic() - started
    await watch.close()
    return {"tokens": watch.tokens, "error": watch.error, "caught_up_s": caught_up_s, "final_behind": final}


def test_every_page_of_a_catch_up_can_carry_a_heartbeat_with_an_advancing_token(
    system: System, admin: RedisCluster
) -> None:
    """The catch-up itself, in-process on the real feed, with a heartbeat due at every moment: a subscriber
    filtering out a backlog of one partition gets a token after every page it goes through, each further on."""
    user = user_in(9, "pages")
    admin.hset(keys.profile_key(user, PARTITIONS), "v", "1")
    system.stop_process("aggregator_svc")
    try:

        async def scenario() -> tuple[list[int], int, int]:
            cluster = Cluster(system.client_settings("profile_svc"))
            try:
                await cluster.verify_partitions()
                feed = EventsFeed(cluster, cluster.settings.partitions, cluster.settings.stream_queue)
                limits = StreamLimits(cluster.settings.streams())
                start = await feed.resume(await _first_token(feed, limits))
                begin = start.anchors[9].n
                _append_reads(admin, system, [user], 20_000)
                end = int(admin.xinfo_stream(keys.events_key(9))["entries-added"])
                limits.heartbeat_s = 0  # a heartbeat is due whenever the feed looks
                seen: list[int] = []
                with limits.slot("test") as clock:
                    async with contextlib.aclosing(feed.watch(clock, start, event_filter(["nobody"], []))) as events:
                        async for event, position in events:
                            assert event is None
                            seen.append(position.anchors[9].n)
                            clock.sent(False)
                            if position.anchors[9].n >= end:
                                break
                return seen, begin, end
            finally:
                await cluster.close()

        seen, begin, end = run_scenario(scenario())
    finally:
        system.start_process("aggregator_svc", "aggregator_svc")
    between = [n for n in seen if begin < n < end]
    assert seen == sorted(seen) and seen[-1] >= end
    # 20,000 entries in pages of CATCH_UP_PAGE: a token after each page but the last.
    assert len(between) >= 20_000 // CATCH_UP_PAGE - 1, (begin, end, seen)


async def _first_token(feed: EventsFeed, limits: StreamLimits) -> str:
    with limits.slot("test") as clock:
        async with contextlib.aclosing(feed.watch(clock, None, event_filter([], []))) as events:
            async for _, position in events:
                return position.token()
    raise AssertionError("no first heartbeat")


async def _sse_catch_up(system: System, token: str, behind: Any) -> dict[str, Any]:
    started = time.monotonic()
    tokens: list[tuple[float, str]] = []
    error: str | None = None
    url = f"{system.gateway_url}/profile/events?users=nobody&types=read"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Last-Event-ID": token}, timeout=aiohttp.ClientTimeout(total=150)) as response,
    ):
        assert response.status == 200, await response.text()
        deadline = time.monotonic() + 120
        final = BEHIND  # as for gRPC: measured when the token arrived
        while time.monotonic() < deadline:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: end"):
                error = line
                break
            if line.startswith("id:"):
                tokens.append((time.monotonic(), line.removeprefix("id:").strip()))
                final = await behind(tokens[-1][1])
                if final < RATE:
                    break
    caught_up_s = time.monotonic() - started
    return {"tokens": tokens, "error": error, "caught_up_s": caught_up_s, "final_behind": final}


# ---------------------------------------------------------------- tokens that name recorded states

TOKEN_BOUND = 256  # bytes: what a level subscriber's token stays within, whatever the partition count


def test_tokens_stay_small_and_resume_exactly_on_another_replica(system: System) -> None:
    """A token names where the replica's tail reader stood (recorded in the cluster), not every partition: it
    stays within TOKEN_BOUND with events in every partition, and the other replica resumes it exactly."""
    users = [user_in(partition, "small") for partition in range(PARTITIONS)]

    async def scenario() -> tuple[Watch, Watch]:
        first = Watch(system.profile_port)
        await first.until(lambda: first.token, what="the first heartbeat")
        for user in users:
            write(system.profile_ports[1], user, ["create", "update"])
        await first.until(lambda: len(first.events) == 2 * PARTITIONS, what="every partition's events")
        await first.close()
        # Resumed before the deletes, and read while they are written: with retention 1 s, what the aggregator
        # has acknowledged goes a second later, and one delete a partition takes seconds at 4,096 partitions.
        resumed = Watch(system.profile_ports[1], resume_token=first.token)
        await resumed.until(lambda: resumed.token, what="a heartbeat of the resumed subscription")

        def delete_all() -> None:
            for user in users:
                write(system.profile_ports[1], user, ["delete"])

        await asyncio.to_thread(delete_all)
        await resumed.until(lambda: len(resumed.events) >= PARTITIONS, what="the deletes after the token")
        await asyncio.sleep(0.5)  # anything more would show here
        await resumed.close()
        return first, resumed

    first, resumed = run_scenario(scenario())
    sizes = [len(token) for _, token in first.tokens]
    assert max(sizes) <= TOKEN_BOUND, sizes
    # Partitions have no order among them: each delete once, and nothing from before the token.
    assert sorted((e.user, e.type) for e in resumed.events) == sorted((user, "delete") for user in users)
    print(f"\ntokens of {PARTITIONS} partitions with events in every one: {min(sizes)}-{max(sizes)} bytes")


def test_a_lost_checkpoint_ends_only_the_tokens_that_named_it(system: System, admin: RedisCluster) -> None:
    """The tail states a token names are gone (a lossy failover of their shard, here deleted): that token is
    EVENTS_TRIMMED with a message saying so. The live subscriber misses nothing; the tokens it gets meanwhile
    carry every partition, and once a new chain is recorded they name it again: both resume exactly on the
    other replica."""
    users = [user_in(partition, "lost") for partition in (2, 5)]
    other = system.profile_ports[1]

    async def scenario() -> tuple[Watch, dict[str, str], dict[str, Watch]]:
        live = Watch(system.profile_port)
        await live.until(lambda: live.token, what="the first heartbeat")
        write(other, users[0], ["create"])
        await live.until(lambda: len(live.events) == 1, what="the first create")
        tokens = {"before the loss": live.token}
        for key in admin.scan_iter(match=f"{keys.FEED_PREFIX}*", count=1000):
            admin.delete(key)
        write(other, users[1], ["create"])
        write(other, users[0], ["update"])
        await live.until(lambda: len(live.events) == 3, what="the events after the loss")
        tokens["found lost"] = live.token
        await asyncio.sleep(1)  # past the wait before a new chain is tried (feed_checkpoints.RETRY_S)
        write(other, users[1], ["update"])
        await live.until(lambda: len(live.events) == 4, what="the update after the wait")
        tokens["new chain"] = live.token
        write(other, users[0], ["delete"])
        await live.until(lambda: len(live.events) == 5, what="the delete")
        await live.close()
        resumed = {}
        for name, token in tokens.items():
            resumed[name] = Watch(other, resume_token=token)
            await resumed[name].until(
                lambda watch=resumed[name]: watch.error is not None or len(watch.events) >= 1, what=name
            )
        await asyncio.sleep(0.5)  # anything more would show here
        for watch in resumed.values():
            await watch.close()
        return live, tokens, resumed

    live, tokens, resumed = run_scenario(scenario())
    seen = [(e.user, e.type) for e in live.events]
    assert sorted(seen) == sorted([*((u, t) for u in users for t in ("create", "update")), (users[0], "delete")])
    lost = resumed["before the loss"].error
    assert lost is not None and lost.code() == grpc.StatusCode.OUT_OF_RANGE, lost
    assert reason_of(lost) == "EVENTS_TRIMMED" and "no longer kept" in (lost.details() or ""), lost
    assert not resumed["before the loss"].events
    after_found = [(e.user, e.type) for e in resumed["found lost"].events]
    assert resumed["found lost"].error is None, resumed["found lost"].error
    assert sorted(after_found) == sorted([(users[1], "update"), (users[0], "delete")]), after_found
    assert resumed["new chain"].error is None, resumed["new chain"].error
    assert [(e.user, e.type) for e in resumed["new chain"].events] == [(users[0], "delete")]
    assert tokens["new chain"].startswith(TOKEN_PREFIX) and len(tokens["new chain"]) <= TOKEN_BOUND, tokens
    print(f"\ntoken lengths: {', '.join(f'{name} {len(token)}' for name, token in tokens.items())}")


# ---------------------------------------------------------------- forged tokens


def forged_tokens(admin: RedisCluster, genuine: str) -> dict[str, tuple[str, str]]:
    """Tokens a client could send, and a phrase of the answer each must get. With the deployment's secret (as
    only the deployment itself has it) the numbers a token could hold are forged too, past the MAC."""
    secret = admin.get(keys.DEPLOYMENT_KEY)
    assert secret
    ours = Tokens(secret.encode(), PARTITIONS)
    start = [Anchor((0, 0), 0, 0)] * PARTITIONS

    def minted(anchor: Anchor) -> str:
        return ours.issue([anchor, *start[1:]])

    body, _, mac = genuine[len(TOKEN_PREFIX) :].partition(".")
    flipped = ("A" if mac[0] != "A" else "B") + mac[1:]  # the first character: all six of its bits count
    return {
        "garbage": ("not-a-token", "not a token this service issued"),
        "an earlier version's": ("v1.MC0wOjA", "not a token this service issued"),
        "empty after the prefix": ("v2.", "not a token this service issued"),
        "not base64": ("v2.@@@.!!!", "not a token this service issued"),
        "altered MAC": (f"{TOKEN_PREFIX}{body}.{flipped}", "altered"),
        "altered body": (f"{TOKEN_PREFIX}{body[:-2]}AA.{mac}", "resume_token"),
        "a full token with an altered body": (ours.issue(start)[:-30] + "A" * 30, "resume_token"),
        "a state's partition out of range": (
            ours.issue_compact([(0, CHAIN)], {PARTITIONS: Anchor((5, 3), 1, 5)}),
            "not a token this service issued",
        ),
        "runs not from partition 0": (ours.issue_compact([(1, CHAIN)], {}), "not a token this service issued"),
        "runs out of order": (
            ours.issue_compact([(0, CHAIN), (3, CHAIN), (2, CHAIN)], {}),
            "not a token this service issued",
        ),
        "another deployment's": (Tokens(b"another secret", PARTITIONS).issue(start), "another profilemesh deployment"),
        "sequence 2^64": (minted(Anchor((5, 2**64), 1, 5)), "not a token this service issued"),
        "negative sequence": (minted(Anchor((5, -3), 1, 5)), "not a token this service issued"),
        "negative offset": (minted(Anchor((5, 3), -1, 5)), "not a token this service issued"),
        "offset 2^63": (minted(Anchor((5, 3), 2**63, 5)), "not a token this service issued"),
        "offset 0 with an id": (minted(Anchor((5, 3), 0, 5)), "not a token this service issued"),
        "too few partitions": (Tokens(secret.encode(), 1).issue(start[:1]), "covers 1 partitions"),
        "too long": ("v2." + "A" * 5000, "not a token this service issued"),
    }


def test_forged_tokens_are_invalid_argument_over_grpc_and_sse(system: System, admin: RedisCluster) -> None:
    async def scenario() -> None:
        watch = Watch(system.profile_port)
        await watch.until(lambda: watch.token, what="a genuine token")
        await watch.close()
        cases = forged_tokens(admin, watch.token)
        async with aiohttp.ClientSession() as session:
            for name, (token, phrase) in cases.items():
                probe = Watch(system.profile_port, resume_token=token)
                await probe.until(lambda probe=probe: probe.error is not None, 10, name)
                await probe.close()
                assert probe.error is not None and probe.error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                assert phrase in (probe.error.details() or ""), (name, probe.error.details())
                violations = status_details(probe.error)["BadRequest"].field_violations
                assert [v.field for v in violations] == ["resume_token"], name
                assert not probe.events, name
                for headers, query in (({"Last-Event-ID": token}, ""), ({}, f"?resume_token={token}")):
                    if len(query) > 4000:
                        continue  # over the gateway's URL limit: refused by the edge, not by the token check
                    async with session.get(f"{system.gateway_url}/profile/events{query}", headers=headers) as reply:
                        if len(headers.get("Last-Event-ID", "")) > 8000:
                            # A full token at thousands of partitions: past the edge's header limit (8,190 bytes),
                            # refused by its HTTP parser before any handler.
                            assert reply.status == 400, (name, reply.status)
                            continue
                        body = json.loads(await reply.text())
                        assert reply.status == 400, (name, reply.status, body)
                        assert "resume_token" in body["message"] or phrase in body["message"], (name, body)

        # Only the deployment could mint a token for an entry the stream never had: it is no outage either, and
        # the answer is not one to retry with the same token.
        secret = admin.get(keys.DEPLOYMENT_KEY)
        assert secret
        future = Tokens(secret.encode(), PARTITIONS).issue(
            [Anchor((2**63, 0), 10**12, 1)] + [Anchor((0, 0), 0, 0)] * (PARTITIONS - 1)
        )
        probe = Watch(system.profile_port, resume_token=future)
        await probe.until(lambda: probe.error is not None, 10, "the future token")
        await probe.close()
        assert probe.error is not None and probe.error.code() == grpc.StatusCode.OUT_OF_RANGE
        assert reason_of(probe.error) == "EVENTS_HISTORY_CHANGED"
        # Nor a token naming a state no process recorded: as one whose state expired, start over.
        unrecorded = Tokens(secret.encode(), PARTITIONS).issue_compact([(0, CHAIN)], {})
        probe = Watch(system.profile_port, resume_token=unrecorded)
        await probe.until(lambda: probe.error is not None, 10, "the unrecorded state")
        await probe.close()
        assert probe.error is not None and probe.error.code() == grpc.StatusCode.OUT_OF_RANGE
        assert reason_of(probe.error) == "EVENTS_TRIMMED" and "no longer kept" in (probe.error.details() or "")

    run_scenario(scenario())
