"""A shard added to the running cluster, a share of the slots moved to it and back, the shard removed, all
under REST load: no request fails, every event is there once, the statistics are exact, the feed has no gap.

The services may retry inside (MOVED, ASK, TRYAGAIN prove a script did not run: common/storage/runner.py);
the test counts those retries and redirects from the services' metrics and holds them to the bound
docs/deploying.md gives. The aggregator's idle check is pushed past the test's length, so a wake-up lost
because a partition's channel moved (common/storage/wakes.py must subscribe on the new owner) shows as
statistics that do not settle, not as a second of lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import grpc
import pytest
from redis.cluster import RedisCluster

from common.storage import keys
from common.storage.nodes import key_slot
from localdev import resharding
from localdev.faults import primary_of
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import aggregator_settled, http_call, metric_sum, wait_until

MOVED_PARTITIONS = 5  # a third of the partitions' slots go to the new shard and back
EMPTY_SLOTS = 300  # and as many slots with no key, as a reshard moves ranges, not single slots
WORKERS = 8
AUDIT = "audit-shards"  # a group that reads nothing: the streams keep every event of the test
TYPES = ["create", "read", "update", "delete"]
TIMEOUT_S = 30
WAKE_S = 10  # an idle partition's next event is counted within this (its idle check: an hour)
# The bound docs/deploying.md states: while a slot moves, each operation in flight on it is retried inside the
# services (TRYAGAIN while the slot's keys are split between the nodes, then a MOVED), a couple of times, with a
# backoff. Over the whole test, at most RETRIES_PER_OPERATION per operation that can be in flight on a slot at once
# (every REST worker's, the aggregator's take, the feed's read, reporting's pipeline) per slot moved with keys.
RETRIES_PER_OPERATION = 2
IN_FLIGHT = WORKERS + 3


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # No idle check during the test: an idle partition wakes only by its channel (see the module's docstring).
    settings = {**TEST_SETTINGS, "PROFILEMESH_AGGREGATOR_MAINTENANCE_S": "3600"}
    # Supervised, as under `make run`: the supervisor must leave the nodes added and removed on purpose alone.
    with running_system(Path(tmp_path_factory.mktemp("shards")), settings, supervised=True) as running:
        yield running


@dataclass
class Load:
    """What the REST load did: each user's operations in order (one worker owns a user), and every answer."""

    ops: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    fields: dict[str, str] = field(default_factory=dict)  # each user's last written value
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)  # (operation, status)
    unexpected: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    parked: int = 0  # workers that stopped for the pause


EXPECTED = {"create": 201, "read": 200, "update": 200, "stats": 200}


async def rest_load(base: str, load: Load) -> None:
    """WORKERS closed loops of creates, reads, updates and top-list reads through the gateway until `stop`."""

    async def worker(number: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(number)
        mine: list[str] = []
        while not load.stop.is_set():
            if load.paused.is_set():
                load.parked += 1
                while load.paused.is_set() and not load.stop.is_set():
                    await asyncio.sleep(0.05)
                load.parked -= 1
                continue
            roll = rng.random()
            if not mine or roll < 0.2:
                user = f"s{number}-{len(mine)}"
                kind, method, path, body = "create", "POST", f"/profile/{user}", {"v": "0"}
            elif roll < 0.75:
                user = rng.choice(mine)
                kind, method, path, body = "read", "GET", f"/profile/{user}", None
            elif roll < 0.95:
                user = rng.choice(mine)
                body = {"v": str(len(load.ops[user]))}
                kind, method, path = "update", "PATCH", f"/profile/{user}"
            else:
                user, kind, method, path, body = "", "stats", "GET", "/reporting/profileStats/10", None
            try:
                async with session.request(method, base + path, json=body) as reply:
                    status, payload = reply.status, await reply.json()
            except (aiohttp.ClientError, TimeoutError) as error:
                status, payload = 0, repr(error)
            load.answers[kind, status] += 1
            if status != EXPECTED[kind] or (kind == "read" and payload != {"v": load.fields[user]}):
                load.unexpected.append(f"{method} {path}: {status} {payload}")
                continue
            if kind == "stats":
                continue
            load.ops[user].append(kind)
            if kind == "create":
                mine.append(user)
            if body is not None:
                load.fields[user] = body["v"]

    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(number, session) for number in range(WORKERS)))


class Feed:
    """WatchProfileEvents of every type, straight to profile_svc (whose tail readers follow the partitions' streams
    across the moves): the events of one subscription after another, each resumed from the last one's token."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.events: list[profile_pb2.ProfileEvent] = []
        self.token = ""
        self.subscriptions = 0
        self.error: grpc.RpcError | None = None
        self._call: Any = None
        self._reader: threading.Thread | None = None

    def subscribe(self) -> None:
        """A subscription from the last token (none: from now), reading in a thread; returns once it delivered its
        first message (a heartbeat): from then on it sees every change."""
        self.unsubscribe()
        request = profile_pb2.WatchProfileEventsRequest(types=TYPES, resume_token=self.token)
        self._call = profile_pb2_grpc.ProfileServiceStub(self.channel).WatchProfileEvents(request)
        started = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self._call, started), daemon=True)
        self._reader.start()
        assert started.wait(10), "the feed did not start"
        self.subscriptions += 1

    def _read(self, call: Any, started: threading.Event) -> None:
        try:
            for message in call:
                started.set()
                if message.HasField("event"):
                    self.events.append(message.event)
                self.token = message.resume_token
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    def unsubscribe(self) -> None:
        """Cancel the subscription (mid-stream: whatever it had not handed over is the next one's)."""
        if self._call is not None and self._reader is not None:
            self._call.cancel()
            self._reader.join(TIMEOUT_S)
            self._call = self._reader = None

    def close(self) -> None:
        self.unsubscribe()
        self.channel.close()


def wakes_reach_the_aggregator(system: System, client: RedisCluster, load: Load, phase: str) -> None:
    """With the load paused and every partition idle (its wake flag armed), one create in each: all of them
    counted within WAKE_S, far below the idle check, so by the wake-up its script sent on the partition's channel,
    wherever the partition is served now."""
    load.paused.set()
    wait_until(lambda: load.parked == WORKERS, timeout_s=TIMEOUT_S, what="the load to pause")
    assert load.unexpected == [], f"{len(load.unexpected)} failed, e.g. {load.unexpected[:3]}"
    wait_until(lambda: aggregator_settled(client, PARTITIONS), timeout_s=TIMEOUT_S, what="the aggregator to settle")
    users: dict[int, str] = {}
    for number in itertools.count():
        users.setdefault(keys.partition_of(f"{phase}-{number}", PARTITIONS), f"{phase}-{number}")
        if len(users) == PARTITIONS:
            break
    for user in users.values():
        status, payload = http_call(system.gateway_port, "POST", f"/profile/{user}", {"v": "0"})
        assert status == 201, payload
        load.ops[user].append("create")
        load.fields[user] = "0"
    creates = sum(ops.count("create") for ops in load.ops.values())

    def counted() -> bool:
        return sum(int(client.hget(keys.totals_key(p), "create") or 0) for p in range(PARTITIONS)) == creates

    wait_until(counted, timeout_s=WAKE_S, what=f"every partition's next event to be counted ({phase})")
    load.paused.clear()


def retries_and_redirects(system: System) -> dict[str, tuple[float, float]]:
    """Per service: its retries of scripts the cluster proved had not run, and the redirects it followed."""
    return {
        name: (
            metric_sum(system.metrics_url(name), "profilemesh_cluster_retries_total"),
            metric_sum(system.metrics_url(name), "profilemesh_cluster_redirects_total"),
        )
        for name in ("profile_svc", "reporting_svc", "aggregator_svc")
    }


def reshard(system: System, client: RedisCluster, load: Load, feed: Feed) -> tuple[dict[str, float], float]:
    """Add a shard, move MOVED_PARTITIONS partitions' slots and EMPTY_SLOTS others to it, check the wake-ups there,
    resume the feed there, move them back, remove the shard, check the wake-ups again. Returns when each step ended (seconds from the
    start) and how many functions the new primary ran."""
    cluster = system.cluster
    moved = [key_slot(keys.events_key(p)) for p in range(MOVED_PARTITIONS)]
    owners = {slot: primary_of(cluster, keys.events_key(p)) for p, slot in enumerate(moved)}  # where they return
    donor = owners[moved[0]]
    used = {key_slot(keys.events_key(p)) for p in range(PARTITIONS)}
    spare = [slot for slot in resharding.slots_of(cluster, donor) if slot not in used][:EMPTY_SLOTS]
    started = time.monotonic()
    timings: dict[str, float] = {}
    time.sleep(1)  # load first, then the topology changes under it
    primary, replica = resharding.add_shard(cluster)
    system.migrate()  # the functions, on the new primary before any slot moves to it
    timings["added"] = time.monotonic() - started
    for slot in moved:
        resharding.migrate_slots(cluster, [slot], owners[slot], primary)
    resharding.migrate_slots(cluster, spare, donor, primary)
    timings["moved out"] = time.monotonic() - started
    assert {primary_of(cluster, keys.events_key(p)) for p in range(MOVED_PARTITIONS)} == {primary}
    wakes_reach_the_aggregator(system, client, load, "moved")
    time.sleep(2)  # the new shard serves its partitions under load for a while
    feed.subscribe()  # from the token, under load: positions on the new shard's streams are checked and read on
    calls = node_calls(system, primary)
    for slot in moved:
        resharding.migrate_slots(cluster, [slot], primary, owners[slot])
    resharding.migrate_slots(cluster, spare, primary, donor)
    timings["moved back"] = time.monotonic() - started
    resharding.remove_shard(cluster, [primary, replica])
    timings["removed"] = time.monotonic() - started
    time.sleep(1)  # and load on the cluster as it was
    wakes_reach_the_aggregator(system, client, load, "back")
    return timings, calls


def test_a_shard_added_and_removed_under_rest_load(system: System) -> None:
    client: RedisCluster = system.cluster.client(decode_responses=True)
    for partition in range(PARTITIONS):
        client.xgroup_create(keys.events_key(partition), AUDIT, id="$", mkstream=True)
    before = retries_and_redirects(system)
    load, feed = Load(), Feed(system.profile_port)
    runner = threading.Thread(target=asyncio.run, args=(rest_load(system.gateway_url, load),), daemon=True)
    try:
        feed.subscribe()
        runner.start()
        try:
            timings, calls_on_new_shard = reshard(system, client, load, feed)
        finally:
            load.stop.set()
            runner.join()
        after = retries_and_redirects(system)
        counts = {name: (after[name][0] - before[name][0], after[name][1] - before[name][1]) for name in after}
        retries = sum(retried for retried, _ in counts.values())
        print(
            f"\n{sum(load.answers.values())} requests {dict(load.answers)}; seconds {timings}; (retries, redirects) "
            f"{counts}; functions run on the new primary {calls_on_new_shard:.0f}"
        )

        # No request failed, each read answered what was last written, and the new shard served.
        assert load.unexpected == []
        assert calls_on_new_shard > 0, "the new shard served nothing"
        assert retries <= RETRIES_PER_OPERATION * IN_FLIGHT * 2 * MOVED_PARTITIONS

        # Every event exactly once, in each user's order: the audit group kept every entry of the test.
        history: dict[str, list[str]] = defaultdict(list)
        entries: dict[int, list[str]] = {}
        for partition in range(PARTITIONS):
            stream = cast(list[tuple[str, dict[str, str]]], client.xrange(keys.events_key(partition)))
            entries[partition] = [entry_id for entry_id, _ in stream]
            for _, fields in stream:
                history[fields["user"]].append(fields["type"])
        assert history == load.ops

        # Every profile is there with its last value, on the cluster as it was.
        for user, value in load.fields.items():
            assert client.hgetall(keys.profile_key(user, PARTITIONS)) == {"v": value}, user

        # The feed: every entry of every partition once, in stream order, no gap across the moves.
        total = sum(map(len, entries.values()))
        with contextlib.suppress(AssertionError):  # what is missing is said below
            wait_until(lambda: len(feed.events) >= total, timeout_s=TIMEOUT_S, what="the feed to deliver every event")
        delivered: dict[int, list[str]] = defaultdict(list)
        for event in feed.events:
            delivered[event.partition].append(event.id)
        assert feed.error is None and feed.subscriptions == 2
        missing = {p: len(set(ids) - set(delivered[p])) for p, ids in entries.items() if set(ids) - set(delivered[p])}
        assert dict(delivered) == {p: ids for p, ids in entries.items() if ids}, f"missing, by partition: {missing}"

        # The statistics: the aggregator followed the moves, every event counted once.
        wait_until(lambda: aggregator_settled(client, PARTITIONS), timeout_s=TIMEOUT_S, what="the aggregator")
        reads = {user: ops.count("read") for user, ops in load.ops.items() if "read" in ops}
        scores = {u: int(client.zscore(keys.reads_key(keys.partition_of(u, PARTITIONS)), u) or 0) for u in load.ops}
        assert {user: n for user, n in scores.items() if n} == reads
        kinds = Counter(kind for ops in load.ops.values() for kind in ops)
        with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
            totals = reporting_pb2_grpc.ReportingServiceStub(channel).GetOperationTotals(
                reporting_pb2.GetOperationTotalsRequest(), timeout=10
            )
        assert (totals.create, totals.read, totals.update, totals.delete) == (
            kinds["create"], kinds["read"], kinds["update"], 0
        )  # fmt: skip
    finally:
        feed.close()
        client.close()


def node_calls(system: System, index: int) -> float:
    """How many functions the node at `index` has run (INFO commandstats): proof that it served partitions."""
    stats = system.cluster.node(index).info("commandstats")
    return float(sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_fcall", "cmdstat_fcall_ro")))
