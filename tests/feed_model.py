"""A model-based check of the change feed: seeded random schedules against a real one-node cluster.

One schedule runs the real EventsFeed in this process's event loop and, around it, writes of every type
through the real Profiles (create, read, update, delete: the write scripts decide what an entry holds),
the real aggregator's takes and trims (Aggregator._take and _maintain, with a retention window), lossy
failovers simulated by restoring a partition's stream to an earlier copy (DUMP, later RESTORE ... REPLACE),
with and without ids handed out again (the stream's last id is first moved a few seconds ahead with XSETID,
so XADD * hands out <ms>-1, <ms>-2, ... and hands them out again after the restore), subscribers with and
without filters that die and resume from random earlier tokens, and forged tokens.

Tail-reader stalls come for free: every change is made while the event loop is blocked (Profiles and the
Aggregator run on a loop of their own in a worker thread, DUMP/RESTORE/XRANGE on a synchronous client),
so the feed's tail readers see nothing until the schedule lets the loop run (a drain). Several changes in a
row without a drain are a stall: writes, takes and trims the tail readers only find afterwards.

The model is the harness's own record of each partition's entries, read with XRANGE after every change:
a tree of entries (a rollback starts a new branch from the restored copy's last entry; the old branch's
entries are lost), which is the current branch, which entries were ever trimmed. After every drain each
subscriber is checked against it: its events must be an exact, gap-free, duplicate-free continuation of its
partition's history from where its token (or its start) was, filtered as asked, each with the offset the
stream gave it, and every token must stand exactly where its subscriber is (read back at once, as a replica
resumes it: the recorded states a token names come from the node); or the subscription ends with
the documented status, justified by the model (EVENTS_TRIMMED only when an entry it still needed was
trimmed, EVENTS_HISTORY_CHANGED only when a rollback removed an entry at or before its position,
INVALID_ARGUMENT naming resume_token for forged, foreign and malformed tokens). A drain ends when every
subscriber has delivered everything it should and its latest token is at the head of every partition.

Each failure is classed by the defect of issue 18 it reveals: 1 catch-up (a subscriber reading as fast as
it can is cut off, or its token never reaches the head), 2 lossy failover, 3 tail-reader gap (or offset
drift) without a failover, 4 forged tokens; 0 for anything else.

The feed's API is used only through FeedAdapter (resume, watch, where a position stands, an event's
offset, forged tokens in the feed's token format). Its tail reader reads every partition every QUIET_CHECK_S,
woken or not, instead of every PROFILEMESH_STREAM_QUIET_CHECK_S (a rollback with nothing appended since
publishes no wake-up: only a quiet check finds it); everything else comes by wake-ups, and a drain gives
a subscriber that long (many times over: STUCK_*) before it calls it stuck.

`python -m tests.feed_model --seed N` replays one schedule (step by step); `--runs K --first-seed S` runs
many and prints a summary by failure kind (`--progress`: a line per schedule). It starts a node of its own.
A replay repeats the seed's choices; what the feed's tasks interleave with them can differ from run to run
(a stall's first write may or may not wake the tail reader before the stall), so a failure seen once may need a few
replays.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import multiprocessing
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from aggregator_svc.aggregator import Aggregator
from common.errors import AlreadyExists, NoGroup, NotFound
from common.rpc.status import as_service_error
from common.rpc.streams import StreamClock, StreamLimits
from common.runtime import cancellation
from common.runtime.config import Settings
from common.storage import keys
from common.storage.cluster import Cluster
from common.storage.stream_ids import StreamId, format_id, parse_id
from localdev import processes
from localdev.cluster import server_binary
from localdev.ports import free_ports
from localdev.waiting import poll_until
from profile_svc import events_feed
from profile_svc.profiles import Profiles
from tests.helpers import load_functions

T = TypeVar("T")

PARTITIONS = 4
# A subscriber's queue, small so that a stall's burst of writes exceeds it, as 3,000 events/s exceed the
# default 2,000 in the issue; the subscribers here read as fast as the loop lets them.
QUEUE = 32
HEARTBEAT_S = 0.002
STUCK_HEARTBEATS = 50  # a subscriber whose token does not move for this many heartbeats is stuck
STUCK_STILL_S = 1.0  # and for this long (many quiet checks: each reads every partition from its tail)
STUCK_S = 2.0  # or that yields nothing at all this long
QUIET_CHECK_S = 0.1  # how often the tail reader reads every partition, woken or not
FUTURE_MS = 3000  # how far ahead XSETID moves a stream's last id for ids handed out again
TYPES = ("create", "read", "update", "delete")
CHANGES = ("create", "update", "delete")  # what a subscriber without `types` gets
MAX_SUBSCRIBERS = 5
REUSE = 1  # schedules per feed-side cluster client (cancelled reads can leave connections taken)
STEPS = (14, 26)  # a schedule's steps (changes, subscriptions, kills, resumes, forged tokens), at random
CLASSES = {
    0: "other",
    1: "catch-up never completes / no advancing token",
    2: "lossy failover: positions, statuses, ids handed out again",
    3: "tail-reader gap or offset drift",
    4: "forged token answered as an outage or accepted",
}


# ---------------------------------------------------------------------------------------------------------
# The node: one cluster-enabled Valkey serving every slot, so services connect to it as to a cluster.


class OneNodeCluster:
    """A one-node cluster on a free port, nothing persisted; the schedules FLUSHALL it between runs."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port, self.bus_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(server_binary()), "--port", str(self.port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--cluster-port", str(self.bus_port), "--cluster-config-file", "nodes.conf", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.data_dir)]
        self.process = subprocess.Popen(
            args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        node = redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)
        poll_until(lambda: _answers(node), 30, "the node to start")
        node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        poll_until(lambda: "cluster_state:ok" in node.execute_command("CLUSTER", "INFO"), 30, "cluster_state:ok")
        load_functions(node)  # the admin step (FLUSHALL between runs leaves them)
        node.close()

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except redis.RedisError:
        return False


def settings_for(url: str) -> Settings:
    return Settings(
        redis_url=url,
        partitions=PARTITIONS,
        durability="none",  # one node, no replica; the durability wait is not what is tested
        redis_timeout_ms=10000,  # a blocked loop must not make a tail reader's socket time out
        stream_queue=QUEUE,
        events_retention_s=1,  # the minimum; the schedules set the aggregator's window in ms below it
    )


# ---------------------------------------------------------------------------------------------------------
# The adapter: the one place that knows the feed's API.


@dataclass(frozen=True)
class Delivered:
    partition: int
    id: StreamId
    user: str
    type: str
    ts: int
    offset: int


@dataclass(frozen=True)
class Outcome:
    """How a subscription ended, as a caller would be told."""

    code: str
    reason: str
    field: str
    message: str


class FeedAdapter:
    """The change feed's API after issue 18: feed.resume(token) (signed tokens, checked before the cluster),
    watch(clock, position, wanted), Position.anchors (id, n, ts), Event.n."""

    api = "issue 18"

    def __init__(self, cluster: Cluster) -> None:
        self.feed = events_feed.EventsFeed(cluster, cluster.settings.partitions, cluster.settings.stream_queue)
        # The tail reader reads every partition every quiet check, news or not (10 s by default): shortened to
        # well within what a drain waits for a stuck subscriber, since a rollback publishes no wake-up.
        self.feed.quiet_check_s = QUIET_CHECK_S
        self.partitions = cluster.settings.partitions

    async def start(self) -> None:
        """What a service does once at start: read (or record) the deployment's identity."""
        await self.feed.tokens()

    async def resume(self, token: str) -> Any:
        return await self.feed.resume(token)

    async def resumes_at(self, token: str) -> list[tuple[StreamId, int, int]] | str:
        """Where a token just issued resumes: it must be where its position stands."""
        try:
            return self.where(await self.feed.resume(token))
        except Exception as error:  # noqa: BLE001  # any failure is the check's finding
            return repr(error)

    def watch(
        self, clock: StreamClock, position: Any, users: Iterable[str], types: Iterable[str]
    ) -> AsyncIterator[Any]:
        return self.feed.watch(clock, position, events_feed.event_filter(users, types))

    @staticmethod
    def where(position: Any) -> list[tuple[StreamId, int, int]]:
        return [(anchor.id, anchor.n, anchor.ts) for anchor in position.anchors]

    @staticmethod
    def delivered(event: Any) -> Delivered:
        return Delivered(event.partition, event.id, event.user, event.type, event.ts_ms, event.n)

    async def close(self) -> None:
        for task in self.feed._tailers:
            task.cancel()
        await asyncio.gather(*self.feed._tailers, return_exceptions=True)

    def forge(self, rng: random.Random, real: str | None) -> tuple[str, str]:
        """A forged token and what it is: malformed, out of range, unsigned, tampered with."""
        identity = "0" * 12
        if real:
            body = real[3:].partition(".")[0]
            identity = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().partition(";")[0]

        def packed(first: str) -> str:
            """This deployment's identity and a plausible position, with a MAC of zeros (no secret)."""
            sane = f"{int(time.time() * 1000) - 1000}-0.1.{int(time.time() * 1000)}"
            text = identity + ";" + ",".join([first] + [sane] * (self.partitions - 1))
            return "v2." + _b64(text.encode()) + "." + _b64(bytes(16))

        now = int(time.time() * 1000)
        kinds: dict[str, Any] = {
            "garbage": lambda: rng.choice(["x", "v2.", "v2.!!!.AA", "v1.AAAA", "v2." + "A" * 600, "\u00e9t\u00e9"]),
            "partition count": lambda: "v2." + _b64(f"{identity};1-0.1.1".encode()) + "." + _b64(bytes(16)),
            "sequence >= 2^64": lambda: packed(f"5-18446744073709551616.1.{now}"),
            "negative sequence": lambda: packed(f"5--3.1.{now}"),
            "negative ms": lambda: packed(f"-5-3.1.{now}"),
            "id in the future": lambda: packed(f"{now + 10**9}-0.1.{now}"),
            "maximum id": lambda: packed(f"18446744073709551615-18446744073709551615.1.{now}"),
            "negative offset": lambda: packed(f"1-0.-7.{now}"),
            "huge offset": lambda: packed(f"1-0.{10**30}.{now}"),
            "unsigned": lambda: packed(f"{now - 5000}-0.1.{now - 5000}"),
        }
        if real:

            def tampered() -> str:
                index = rng.randrange(3, len(real))  # past the version prefix
                alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijkl0123456789-_"
                return real[:index] + rng.choice([c for c in alphabet if c != real[index]]) + real[index + 1 :]

            kinds["tampered"] = tampered
            kinds["truncated"] = lambda: real[: rng.randrange(3, len(real) - 1)]
        kind = rng.choice(sorted(kinds))
        return kinds[kind](), kind


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def outcome_of(error: BaseException) -> Outcome:
    failure = as_service_error(error)
    if failure is None:
        return Outcome("UNKNOWN", type(error).__name__, "", repr(error)[:300])
    return Outcome(failure.code.name, failure.reason, getattr(failure, "field", ""), failure.message[:300])


# ---------------------------------------------------------------------------------------------------------
# The model: every entry ever appended, as a tree per partition; the current branch; what was trimmed.


@dataclass
class Entry:
    uid: int
    partition: int
    id: StreamId
    offset: int
    user: str
    type: str
    ts: int
    prev: int | None  # the entry before it when it was appended (None: the stream's first)
    index: int  # its place in its branch
    lost: bool = False  # a rollback removed it
    trimmed: bool = False  # it was trimmed at some point


@dataclass
class PartitionModel:
    lineage: list[int] = field(default_factory=list)  # the current branch, by uid
    head: int = 0  # index in lineage of the first entry the stream still holds
    by_id: dict[StreamId, list[int]] = field(default_factory=dict)
    aliases: dict[StreamId, int | None] = field(default_factory=dict)  # ids XSETID made: the entry they follow
    children: dict[int | None, list[int]] = field(default_factory=dict)
    rollbacks: list[int] = field(default_factory=list)  # the steps at which one happened
    added: int = 0  # entries-added of the current branch's stream


class Model:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.parts = [PartitionModel() for _ in range(PARTITIONS)]

    def append(self, partition: int, raw_id: StreamId, fields: dict[str, str], offset: int) -> Entry:
        part = self.parts[partition]
        prev = part.lineage[-1] if part.lineage else None
        entry = Entry(
            len(self.entries),
            partition,
            raw_id,
            offset,
            fields["user"],
            fields["type"],
            int(fields["ts"]),
            prev,
            len(part.lineage),
        )
        self.entries.append(entry)
        part.lineage.append(entry.uid)
        part.by_id.setdefault(raw_id, []).append(entry.uid)
        part.children.setdefault(prev, []).append(entry.uid)
        return entry

    def current(self, uid: int | None, partition: int) -> bool:
        """Whether the entry (None: the beginning) is on the partition's current branch."""
        if uid is None:
            return True
        entry = self.entries[uid]
        lineage = self.parts[partition].lineage
        return entry.index < len(lineage) and lineage[entry.index] == uid

    def anchor(self, uid: int | None, partition: int) -> int | None:
        """The last entry at or before `uid` on its branch that is on the current branch too."""
        while uid is not None and not self.current(uid, partition):
            uid = self.entries[uid].prev
        return uid

    def is_descendant(self, uid: int, of: int | None) -> bool:
        node: int | None = uid
        while node is not None:
            node = self.entries[node].prev
            if node == of:
                return True
        return of is None

    def between(self, after: int | None, upto: int) -> list[Entry]:
        """The entries after `after` up to and including `upto`, on upto's branch (after must precede it)."""
        path: list[Entry] = []
        node: int | None = upto
        while node is not None and node != after:
            path.append(self.entries[node])
            node = self.entries[node].prev
        return path[::-1]

    def after(self, uid: int | None, partition: int) -> list[Entry]:
        """The current branch's entries after `uid` (which must be on it)."""
        start = 0 if uid is None else self.entries[uid].index + 1
        return [self.entries[u] for u in self.parts[partition].lineage[start:]]

    def offset_of(self, uid: int | None, partition: int) -> int:
        return 0 if uid is None else self.entries[uid].offset


# ---------------------------------------------------------------------------------------------------------
# Subscribers and their checks.


@dataclass
class Item:
    event: Delivered | None
    where: list[tuple[StreamId, int, int]]  # per partition: id, offset and time of the entry it stands on
    token: str
    resumes_at: list[tuple[StreamId, int, int]] | str  # where the token resumes, read back at once (or why not)


@dataclass
class Failure:
    defect: int
    kind: str
    detail: str


@dataclass
class TokenInfo:
    """What a token stands for in the model: per partition, the last entry its chain delivered (or started at)."""

    token: str
    origin: Subscriber
    last: list[int | None]
    delivered_any: list[bool]
    chain_step: int  # the step at which the chain of subscribers behind it began


class Subscriber:
    def __init__(self, name: str, users: list[str], types: list[str], step: int) -> None:
        self.name = name
        self.users = users
        self.types = types
        self.wanted_types = set(types) or set(CHANGES)
        self.items: list[Item] = []
        self.checked = 0
        self.outcome: Outcome | None = None
        self.task: asyncio.Task[None] | None = None
        self.failure: Failure | None = None
        self.last: list[int | None] = [None] * PARTITIONS  # last entry delivered (or the start), per partition
        self.delivered_any = [False] * PARTITIONS  # whether `last` was delivered (else: where it started)
        self.started = False
        self.chain_step = step
        self.forged: str | None = None  # what kind of forged token it resumed from
        self.from_token: TokenInfo | None = None
        self.heartbeats_still = 0
        self.progress_at = self.still_since = time.monotonic()
        self.done_checked = False
        self.last_token = ""

    def wants(self, entry: Entry) -> bool:
        return entry.type in self.wanted_types and (not self.users or entry.user in self.users)

    @property
    def alive(self) -> bool:
        return self.outcome is None and self.task is not None and not self.task.done()

    def describe(self) -> str:
        users = ",".join(self.users) if self.users else "*"
        return f"{self.name}[users={users} types={','.join(sorted(self.wanted_types))}]"


class Schedule:
    """One seeded run."""

    def __init__(self, harness: Harness, seed: int, verbose: bool = False) -> None:
        self.h = harness
        self.seed = seed
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.model = Model()
        self.subscribers: list[Subscriber] = []
        self.tokens: list[TokenInfo] = []
        self.failures: list[Failure] = []
        self.exists: dict[str, bool] = {}
        self.snapshots: dict[int, tuple[dict[str, bytes | None], list[int], int, int]] = {}
        self.step = 0
        self.counter = Counter[str]()
        self.changed = asyncio.Event()
        self.users = harness.users
        self.retention_ms = 0

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"[{self.step:3d}] {text}", flush=True)

    def fail(self, subscriber: Subscriber | None, defect: int, kind: str, detail: str) -> None:
        who = subscriber.describe() if subscriber else "-"
        failure = Failure(defect, kind, f"step {self.step}, {who}: {detail}")
        if subscriber is not None:
            if subscriber.failure is not None:
                return
            subscriber.failure = failure
        self.failures.append(failure)
        self.log(f"FAILURE ({defect}) {kind}: {failure.detail}")

    # -- changes, made with the event loop blocked ------------------------------------------------------

    def sync(self, partition: int, expected: list[tuple[str, str]]) -> None:
        """Read what the writes appended (XRANGE after the model's last entry) into the model."""
        part = self.model.parts[partition]
        stream = keys.events_key(partition)
        last = self.model.entries[part.lineage[-1]].id if part.lineage else (0, 0)
        pipe = self.h.node.pipeline(transaction=False)
        pipe.xrange(stream, min=f"({format_id(last)}" if part.lineage else "-", max="+")
        pipe.xinfo_stream(stream)
        entries, info = pipe.execute()
        got = [(fields[b"user"].decode(), fields[b"type"].decode()) for _, fields in entries]
        assert got == expected, f"harness: the stream got {got}, the writes were {expected}"
        added = int(info["entries-added"])
        assert added - part.added == len(entries), (
            f"harness: entries-added {added}, expected {part.added + len(entries)}"
        )
        for n, (raw_id, fields) in enumerate(entries, 1):
            decoded = {k.decode(): v.decode() for k, v in fields.items()}
            self.model.append(partition, parse_id(raw_id), decoded, part.added + n)
        part.added = added

    def write(self, partition: int, count: int) -> None:
        users = [u for u in self.users if keys.partition_of(u, PARTITIONS) == partition]
        expected: list[tuple[str, str]] = []
        for _ in range(count):
            user = self.rng.choice(users)
            roll = self.rng.random()
            if not self.exists.get(user):
                kind = "create"
            else:
                kind = "read" if roll < 0.45 else "update" if roll < 0.8 else "delete"
            self.h.run(self.h.perform(kind, user))
            self.exists[user] = kind != "delete"
            expected.append((user, kind))
            self.counter[kind] += 1
        self.sync(partition, expected)
        self.log(f"wrote {count} to p{partition}: {expected}")

    def take(self, partition: int) -> None:
        taken = self.h.run(self.h.take(partition, self.rng.randint(1, 12)))
        self.counter["take"] += 1
        self.log(f"took {taken} on p{partition}")

    def trim(self, partition: int) -> None:
        self.h.run(self.h.trim(partition, self.retention_ms))
        part = self.model.parts[partition]
        first = self.h.node.xrange(keys.events_key(partition), count=1)
        head = len(part.lineage)
        if first:
            first_id = parse_id(first[0][0])
            head = next(i for i, u in enumerate(part.lineage) if self.model.entries[u].id == first_id)
        for uid in part.lineage[part.head : head]:
            self.model.entries[uid].trimmed = True
        self.log(f"trimmed p{partition} (retention {self.retention_ms} ms): {head - part.head} entries")
        part.head = max(part.head, head)
        self.counter["trim"] += 1

    def snapshot(self, partition: int, reuse: bool) -> None:
        """DUMP the stream (the copy a replica holds); with `reuse`, its last id is moved ahead first."""
        part = self.model.parts[partition]
        stream = keys.events_key(partition)
        if reuse and self.h.node.exists(stream):
            info = self.h.node.xinfo_stream(stream)
            last_ms = parse_id(info["last-generated-id"])[0]
            ahead = (max(last_ms, int(time.time() * 1000)) + FUTURE_MS, 0)
            self.h.node.execute_command("XSETID", stream, format_id(ahead))
            part.aliases[ahead] = part.lineage[-1] if part.lineage else None
        # The copy holds the partition's stream and the record of its last trimmed entry (same slot).
        copied = [stream, keys.trimmed_key(partition)] if hasattr(keys, "trimmed_key") else [stream]  # (none before)
        dump = {key: self.h.node.dump(key) for key in copied}
        self.snapshots[partition] = (dump, list(part.lineage), part.head, part.added)
        self.counter["snapshot-reuse" if reuse else "snapshot"] += 1
        self.log(f"snapshot of p{partition} at {len(part.lineage)} entries{' (ids ahead)' if reuse else ''}")

    def rollback(self, partition: int) -> None:
        """Restore the copy: the entries appended since are lost (the promoted replica never had them)."""
        dump, lineage, head, added = self.snapshots.pop(partition)
        for key, payload in dump.items():
            if payload is None:
                self.h.node.delete(key)
            else:
                self.h.node.restore(key, 0, payload, replace=True)
        part = self.model.parts[partition]
        kept = set(lineage)
        lost = [uid for uid in part.lineage if uid not in kept]
        for uid in lost:
            self.model.entries[uid].lost = True
        part.lineage, part.head, part.added = lineage, head, added
        part.rollbacks.append(self.step)
        time.sleep(0.0015)  # the entries written next get a later ts than the lost ones: they can be told apart
        self.counter["rollback"] += 1
        self.log(f"rollback of p{partition} to {len(lineage)} entries: {len(lost)} lost")

    # -- subscribers ---------------------------------------------------------------------------------------

    async def subscribe(self, subscriber: Subscriber, token: str | None) -> None:
        self.subscribers.append(subscriber)
        clock = StreamClock(self.h.limits)

        async def collect() -> None:
            try:
                position = await self.h.adapter.resume(token) if token is not None else None
                async with contextlib.aclosing(
                    self.h.adapter.watch(clock, position, subscriber.users, subscriber.types)
                ) as feed:
                    async for event, where in feed:
                        issued = where.token()
                        subscriber.items.append(
                            Item(
                                None if event is None else self.h.adapter.delivered(event),
                                self.h.adapter.where(where),
                                issued,
                                await self.h.adapter.resumes_at(issued),
                            )
                        )
                        clock.sent(event is not None)
                        self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001  # every way a subscription ends is checked
                subscriber.outcome = outcome_of(error)
                self.changed.set()

        subscriber.task = asyncio.create_task(collect(), name=subscriber.name)
        # Let it subscribe (its first message) before anything else happens.
        deadline = time.monotonic() + 2
        while not subscriber.items and subscriber.outcome is None and time.monotonic() < deadline:
            await self.wait_change(0.05)

    async def wait_change(self, within_s: float) -> None:
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self.changed.wait()

    def filters(self) -> tuple[list[str], list[str]]:
        users: list[str] = []
        types: list[str] = []
        roll = self.rng.random()
        if roll < 0.35:
            users = self.rng.sample(self.users, self.rng.randint(1, 3))
        elif roll < 0.45:
            users = ["nobody"]
        if self.rng.random() < 0.5:
            types = self.rng.sample(TYPES, self.rng.randint(1, 4))
        return users, types

    async def fresh(self) -> None:
        users, types = self.filters()
        subscriber = Subscriber(f"s{len(self.subscribers)}", users, types, self.step)
        self.log(f"new subscriber {subscriber.describe()}")
        await self.subscribe(subscriber, None)
        self.counter["fresh"] += 1

    async def resume(self) -> None:
        if not self.tokens:
            return
        info = self.tokens[int(self.rng.random() ** 2 * len(self.tokens))]  # older tokens less often
        origin = info.origin
        subscriber = Subscriber(f"s{len(self.subscribers)}", origin.users, origin.types, info.chain_step)
        subscriber.last = list(info.last)
        subscriber.delivered_any = list(info.delivered_any)
        subscriber.from_token = info
        subscriber.started = True
        self.log(f"resume {subscriber.describe()} from a token of {origin.name} (last {info.last})")
        await self.subscribe(subscriber, info.token)
        self.counter["resume"] += 1

    async def forged(self) -> None:
        real = self.rng.choice(self.tokens).token if self.tokens and self.rng.random() < 0.5 else None
        if self.h.foreign and self.rng.random() < 0.25:
            token, kind = self.rng.choice(self.h.foreign), "foreign (another deployment's)"
        else:
            token, kind = self.h.adapter.forge(self.rng, real)
        subscriber = Subscriber(f"s{len(self.subscribers)}", [], [], self.step)
        subscriber.forged = kind
        self.log(f"forged token ({kind}): {token[:60]!r}")
        await self.subscribe(subscriber, token)
        self.counter["forged"] += 1

    async def kill(self) -> None:
        alive = [s for s in self.subscribers if s.alive and s.forged is None]
        if not alive:
            return
        subscriber = self.rng.choice(alive)
        self.check(subscriber)
        await stop(subscriber)
        self.check(subscriber)
        self.log(f"killed {subscriber.describe()}")
        self.counter["kill"] += 1

    # -- checks ---------------------------------------------------------------------------------------------

    def rolled_back(self, subscriber: Subscriber, partition: int) -> bool:
        return any(step >= subscriber.chain_step for step in self.model.parts[partition].rollbacks)

    def drift_defect(self, subscriber: Subscriber, partition: int) -> int:
        return 2 if self.rolled_back(subscriber, partition) else 3

    def resolve(self, partition: int, position: StreamId, ts: int | None = None) -> list[int | None] | None:
        """The entries a position's id (and time, when known: an id handed out again after a rollback has
        another) may stand for (an alias stands for the entry before it)."""
        if position == (0, 0):
            return [None]
        part = self.model.parts[partition]
        candidates: list[int | None] = [
            uid for uid in part.by_id.get(position, []) if ts is None or self.model.entries[uid].ts == ts
        ]
        if position in part.aliases:
            candidates.append(part.aliases[position])
        return candidates or None

    def reachable(self, subscriber: Subscriber, partition: int, uid: int | None) -> bool:
        """Whether a subscriber whose last entry is `last` may stand at `uid` having delivered nothing more:
        `uid` is `last`, or after it with only unwanted entries between (on some branch, or from the current
        branch's anchor when nothing it delivered was lost)."""
        last = subscriber.last[partition]
        bases = [last]
        if not (subscriber.delivered_any[partition] and self.lost(last)):
            bases.append(self.model.anchor(last, partition))
        for base in bases:
            if uid == base:
                return True
            if (
                uid is not None
                and self.model.is_descendant(uid, base)
                and not any(subscriber.wants(e) for e in self.model.between(base, uid))
            ):
                return True
        return False

    def lost(self, uid: int | None) -> bool:
        return uid is not None and self.model.entries[uid].lost

    def check(self, subscriber: Subscriber) -> None:
        """Check the items it yielded since the last check, and how it ended."""
        while subscriber.checked < len(subscriber.items) and subscriber.failure is None:
            item = subscriber.items[subscriber.checked]
            subscriber.checked += 1
            subscriber.progress_at = time.monotonic()
            if subscriber.forged is not None:
                self.fail(
                    subscriber,
                    4,
                    "forged token accepted",
                    f"{subscriber.forged} token: the stream went on (yielded a message)",
                )
                return
            if item.event is not None:
                self.check_event(subscriber, item.event)
            if subscriber.failure is None:
                self.check_token(subscriber, item)
        done = subscriber.outcome is not None and subscriber.checked == len(subscriber.items)
        if subscriber.failure is None and subscriber.outcome is not None and done and not subscriber.done_checked:
            subscriber.done_checked = True
            self.check_outcome(subscriber, subscriber.outcome)

    def check_event(self, subscriber: Subscriber, event: Delivered) -> None:
        p = event.partition
        candidates = [
            uid
            for uid in self.model.parts[p].by_id.get(event.id, [])
            if (self.model.entries[uid].user, self.model.entries[uid].type, self.model.entries[uid].ts)
            == (event.user, event.type, event.ts)
        ]
        if not candidates:
            self.fail(
                subscriber, self.drift_defect(subscriber, p), "phantom event", f"p{p} {event} is no entry ever written"
            )
            return
        uid = candidates[-1]
        entry = self.model.entries[uid]
        if not subscriber.wants(entry):
            self.fail(subscriber, 0, "unwanted event", f"p{p} {format_id(entry.id)} {entry.user}/{entry.type}")
            return
        if not self.reachable_next(subscriber, p, uid):
            self.fail(subscriber, *self.why_not_next(subscriber, p, uid))
            return
        if event.offset != entry.offset:
            self.fail(
                subscriber,
                self.drift_defect(subscriber, p),
                "event offset drift",
                f"p{p} {format_id(entry.id)} came with offset {event.offset}, the stream's is {entry.offset}",
            )
            return
        subscriber.last[p] = uid
        subscriber.delivered_any[p] = True

    def reachable_next(self, subscriber: Subscriber, p: int, uid: int) -> bool:
        """Whether `uid` (wanted) may be the next event: reachable from the last through unwanted ones only."""
        prev = self.model.entries[uid].prev
        return subscriber.started and self.reachable(subscriber, p, prev)

    def why_not_next(self, subscriber: Subscriber, p: int, uid: int) -> tuple[int, str, str]:
        entry = self.model.entries[uid]
        last = subscriber.last[p]
        where = f"p{p}: after {self.name_of(last)} it delivered {self.name_of(uid)}"
        rolled = self.rolled_back(subscriber, p)
        if uid == last or (last is not None and self.model.is_descendant(last, uid)):
            return (2 if rolled else 3), "duplicate event", where
        if self.model.is_descendant(uid, last):
            skipped = [e for e in self.model.between(last, uid)[:-1] if subscriber.wants(e)]
            names = ", ".join(self.name_of(e.uid) for e in skipped[:5])
            if any(e.trimmed for e in skipped):
                return (
                    (2 if rolled else 3),
                    "gap: trimmed events skipped without EVENTS_TRIMMED",
                    f"{where}, skipping {names}",
                )
            return (2 if rolled else 3), "gap: events skipped", f"{where}, skipping {names}"
        anchor = self.model.anchor(last, p)
        if self.model.is_descendant(uid, anchor) and not self.lost(uid):
            if subscriber.delivered_any[p] and self.lost(last):
                return 2, "went on after delivering lost events, without EVENTS_HISTORY_CHANGED", where
            skipped = [e for e in self.model.between(anchor, uid)[:-1] if subscriber.wants(e)]
            names = ", ".join(self.name_of(e.uid) for e in skipped[:5])
            return 2, "missed events after a rollback (ids handed out again)", f"{where}, skipping {names}"
        return (2 if rolled or entry.lost else 0), "event out of order", where

    def name_of(self, uid: int | None) -> str:
        if uid is None:
            return "the beginning"
        e = self.model.entries[uid]
        state = " lost" if e.lost else ""
        return f"{format_id(e.id)}#{e.offset} {e.user}/{e.type}{state}"

    def check_token(self, subscriber: Subscriber, item: Item) -> None:
        if len(item.where) != PARTITIONS:
            self.fail(subscriber, 0, "token of a wrong size", f"{len(item.where)} partitions")
            return
        if item.resumes_at != item.where:
            self.fail(subscriber, 0, "token resumes elsewhere", f"{item.resumes_at} where it stood at {item.where}")
            return
        for p, (position, offset, ts) in enumerate(item.where):
            candidates = self.resolve(p, position, ts)
            if candidates is None:
                self.fail(
                    subscriber, self.drift_defect(subscriber, p), "token at no entry", f"p{p} at {format_id(position)}"
                )
                return
            if not subscriber.started:
                uid = candidates[-1]  # a fresh subscription starts where its first token says
                subscriber.last[p] = uid
                continue
            matches = [uid for uid in candidates if self.reachable(subscriber, p, uid)]
            if not matches:
                self.fail(
                    subscriber,
                    self.drift_defect(subscriber, p),
                    "token not at its subscriber's position",
                    f"p{p}: token at {format_id(position)} ({', '.join(self.name_of(c) for c in candidates)}), "
                    f"last delivered {self.name_of(subscriber.last[p])}",
                )
                return
            expected = self.model.offset_of(matches[-1], p)
            if offset != expected:
                self.fail(
                    subscriber,
                    self.drift_defect(subscriber, p),
                    "token offset drift",
                    f"p{p}: token at {format_id(position)} with offset {offset}, the stream's is {expected}",
                )
                return
        subscriber.started = True
        if (
            item.event is None
            and subscriber.checked >= 2
            and subscriber.items[subscriber.checked - 2].token == item.token
        ):
            subscriber.heartbeats_still += 1
        else:
            subscriber.heartbeats_still = 0
            subscriber.still_since = time.monotonic()
        if subscriber.forged is None and subscriber.last_token != item.token:
            subscriber.last_token = item.token
            self.tokens.append(
                TokenInfo(
                    item.token, subscriber, list(subscriber.last), list(subscriber.delivered_any), subscriber.chain_step
                )
            )

    def justified_trim(self, subscriber: Subscriber) -> bool:
        """An entry it still needed was trimmed: one after its last, with only unwanted ones before it."""
        for p in range(PARTITIONS):
            last = subscriber.last[p]
            for base in {last, self.model.anchor(last, p)}:
                frontier = list(self.model.parts[p].children.get(base, []))
                while frontier:
                    uid = frontier.pop()
                    entry = self.model.entries[uid]
                    if entry.trimmed:
                        return True
                    if not subscriber.wants(entry):
                        frontier.extend(self.model.parts[p].children.get(uid, []))
        return False

    def justified_history(self, subscriber: Subscriber) -> bool:
        """A rollback removed an entry at or before its position: its last, or one it may have passed."""
        for p in range(PARTITIONS):
            last = subscriber.last[p]
            if self.lost(last):
                return True
            frontier = list(self.model.parts[p].children.get(last, []))
            while frontier:
                uid = frontier.pop()
                entry = self.model.entries[uid]
                if subscriber.wants(entry):
                    continue
                if entry.lost:
                    return True
                frontier.extend(self.model.parts[p].children.get(uid, []))
        return False

    def check_outcome(self, subscriber: Subscriber, outcome: Outcome) -> None:
        text = f"ended {outcome.code} {outcome.reason} (field {outcome.field!r}): {outcome.message}"
        self.log(f"{subscriber.describe()} {text}")
        if subscriber.forged is not None:
            if outcome.code == "INVALID_ARGUMENT" and outcome.field == "resume_token":
                return
            kind = (
                "forged token answered as an outage" if outcome.code == "UNAVAILABLE" else "forged token: wrong status"
            )
            self.fail(subscriber, 4, kind, f"{subscriber.forged} token {text}")
            return
        if outcome.code == "OUT_OF_RANGE" and outcome.reason == "EVENTS_TRIMMED":
            if not self.justified_trim(subscriber):
                rolled = any(self.rolled_back(subscriber, p) for p in range(PARTITIONS))
                self.fail(subscriber, 2 if rolled else 3, "EVENTS_TRIMMED though nothing it needed was trimmed", text)
        elif outcome.code == "OUT_OF_RANGE" and outcome.reason == "EVENTS_HISTORY_CHANGED":
            if not self.justified_history(subscriber):
                self.fail(subscriber, 2, "EVENTS_HISTORY_CHANGED though no rollback touched its position", text)
        elif outcome.code == "RESOURCE_EXHAUSTED":
            self.fail(subscriber, 1, "cut off while reading as fast as it can", text)
        elif outcome.code == "INVALID_ARGUMENT":
            self.fail(subscriber, 4, "a token the feed issued was refused", text)
        else:
            self.fail(subscriber, 0, f"ended {outcome.code}", text)

    def settled(self, subscriber: Subscriber) -> tuple[bool, tuple[int, str, str] | None]:
        """Whether it has everything it should and stands at the head; else why not (for a stuck one)."""
        if subscriber.failure is not None or subscriber.outcome is not None or not subscriber.alive:
            return True, None
        if subscriber.forged is not None:
            return False, (4, "forged token accepted", f"{subscriber.forged} token: the stream goes on")
        if not subscriber.items:
            return False, (0, "no first message", "the subscription yielded nothing")
        where = subscriber.items[-1].where
        for p in range(PARTITIONS):
            last = subscriber.last[p]
            rolled = self.rolled_back(subscriber, p)
            base = self.model.anchor(last, p)
            # A rollback is found when the stream is next read: once something was written after it.
            written_since = bool(self.model.after(base, p))
            if subscriber.delivered_any[p] and self.lost(last):
                if not written_since:
                    continue
                return False, (
                    2,
                    "no EVENTS_HISTORY_CHANGED after delivering lost events",
                    f"p{p}: delivered {self.name_of(last)}",
                )
            missing = [e for e in self.model.after(base, p) if subscriber.wants(e)]
            if missing:
                first = missing[0]
                part = self.model.parts[p]
                if first.index < part.head:
                    return False, (
                        2 if rolled else 3,
                        "no EVENTS_TRIMMED though events it needed were trimmed",
                        f"p{p}: after {self.name_of(last)}, {self.name_of(first.uid)} is trimmed",
                    )
                reissued = any(len(part.by_id[e.id]) > 1 for e in missing)
                kind = "missed events handed out again after a rollback" if reissued else "events not delivered"
                return False, (
                    2 if rolled else 3,
                    kind,
                    f"p{p}: after {self.name_of(last)}, {len(missing)} missing, first {self.name_of(first.uid)}",
                )
            lineage = self.model.parts[p].lineage
            head = lineage[-1] if lineage else None
            candidates = self.resolve(p, where[p][0], where[p][2]) or []
            if head not in candidates and not (not written_since and any(self.lost(c) for c in candidates)):
                return False, (
                    2 if rolled else 1,
                    "token does not advance to the head",
                    f"p{p}: token at {format_id(where[p][0])}, head {self.name_of(head)}",
                )
        return True, None

    async def drain(self, final: bool = False) -> None:
        """Let the loop run until every subscriber is settled (or found stuck), checking as items arrive."""
        self.counter["drain"] += 1
        started = time.monotonic()
        while True:
            pending = []
            for subscriber in self.subscribers:
                self.check(subscriber)
                ok, why = self.settled(subscriber)
                if not ok:
                    pending.append((subscriber, why))
            if not pending:
                break
            now = time.monotonic()
            for subscriber, why in pending:
                assert why is not None
                still = now - subscriber.still_since
                if (subscriber.heartbeats_still >= STUCK_HEARTBEATS and still > STUCK_STILL_S) or (
                    now - subscriber.progress_at > STUCK_S
                ):
                    self.fail(subscriber, *why)
                    await stop(subscriber)
            if now - started > 10:
                for subscriber, why in pending:
                    assert why is not None
                    self.fail(subscriber, why[0], why[1] + " (drain timed out)", why[2])
                    await stop(subscriber)
            await self.wait_change(0.02)
        # Forged-token subscriptions and failed ones are done with once checked.
        for subscriber in self.subscribers:
            if subscriber.alive and (subscriber.failure is not None or subscriber.forged is not None):
                await stop(subscriber)
        del final

    # -- the schedule ---------------------------------------------------------------------------------------

    async def play(self) -> list[Failure]:
        rng = self.rng
        self.retention_ms = rng.choice([0, 0, 2, 10, 600_000])
        hot = rng.sample(range(PARTITIONS), rng.randint(1, 2))
        steps = rng.randint(*self.h.steps)
        for _ in range(rng.randint(1, 3)):
            await self.fresh()
        stall = False
        for self.step in range(1, steps + 1):
            action = rng.choices(
                ["write", "burst", "take", "trim", "snapshot", "rollback", "kill", "resume", "fresh", "forged"],
                weights=[8, 1, 3, 3, 1.2, 1.5, 1, 2.5, 0.7, 1],
            )[0]
            partition = rng.choice(hot) if rng.random() < 0.8 else rng.randrange(PARTITIONS)
            alive = sum(s.alive for s in self.subscribers)
            if action == "write":
                self.write(partition, rng.randint(1, 5))
            elif action == "burst":
                self.write(partition, rng.randint(QUEUE // 2, QUEUE + 12))
            elif action == "take":
                self.take(partition)
            elif action == "trim":
                self.take(partition)
                self.trim(partition)
            elif action == "snapshot" and partition not in self.snapshots:
                self.snapshot(partition, reuse=rng.random() < 0.5)
            elif action == "rollback" and self.snapshots:
                self.rollback(rng.choice(sorted(self.snapshots)))
            elif action in ("kill", "resume", "fresh", "forged") or alive == 0:
                if stall:
                    await self.drain()
                    stall = False
                if action == "kill":
                    await self.kill()
                elif alive >= MAX_SUBSCRIBERS:
                    pass
                elif action == "resume":
                    await self.resume()
                elif action == "forged":
                    await self.forged()
                else:
                    await self.fresh()
                continue
            # A change: let the feed see it now, or only after more changes (a stall).
            stall = rng.random() < 0.55
            if not stall:
                await self.drain()
        await self.drain(final=True)
        return self.failures

    async def close(self) -> None:
        for subscriber in self.subscribers:
            await stop(subscriber)


async def stop(subscriber: Subscriber) -> None:
    """Cancel its task, again if need be: on Python 3.11 a cancel that meets the clock's heartbeat timeout
    at the same moment is taken for the timeout (asyncio.timeout swallows it) and the stream goes on."""
    task = subscriber.task
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)


# ---------------------------------------------------------------------------------------------------------
# The harness: the node, the feed in this loop, Profiles and the Aggregator on a worker thread's loop.


class Harness:
    def __init__(self, url: str, steps: tuple[int, int] = STEPS) -> None:
        self.url = url
        self.settings = settings_for(url)
        self.node = redis.Redis.from_url(url, socket_timeout=10)
        self.limits = StreamLimits(self.settings.streams())
        self.limits.heartbeat_s = HEARTBEAT_S  # type: ignore[assignment]  # seconds, below the setting's minimum of 1
        self.users = pick_users()
        self.foreign: list[str] = []  # tokens of earlier schedules: another deployment's, to this one
        self.steps = steps
        self.schedules = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="feed-model-worker", daemon=True)
        self._thread.start()
        self.run(self._setup())
        self.cluster: Cluster | None = None
        self.adapter: FeedAdapter

    async def _setup(self) -> None:
        self.worker_cluster = Cluster(self.settings)
        await self.worker_cluster.verify_partitions()  # learns the layout's generation, as a service does at start
        self.profiles = Profiles(self.worker_cluster, self.settings.partitions)
        self.aggregator = Aggregator(self.worker_cluster, self.settings.aggregation())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on the worker's loop, blocking this thread (and so the feed's loop) until it is done."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def perform(self, kind: str, user: str) -> None:
        try:
            if kind == "create":
                await self.profiles.create(user, {"n": "1"})
            elif kind == "read":
                await self.profiles.get(user)
            elif kind == "update":
                await self.profiles.update(user, {"n": "2"})
            else:
                await self.profiles.delete(user)
        except (AlreadyExists, NotFound) as error:
            raise AssertionError(f"harness: {kind} of {user}: {error}") from error

    async def take(self, partition: int, batch: int) -> int:
        self.aggregator.batch = batch
        for _ in range(2):
            try:
                return await self.aggregator._take(partition)
            except NoGroup:  # the storage layer's (common/errors.py) since the one door
                await self.aggregator._ensure_group(partition)
        return 0

    async def trim(self, partition: int, retention_ms: int) -> None:
        self.aggregator.retention_ms = retention_ms
        with contextlib.suppress(NoGroup):  # nothing taken yet, nothing to trim
            await self.aggregator._maintain(partition)

    async def schedule(self, seed: int, verbose: bool = False) -> list[Failure]:
        self.node.flushall()
        # A client of its own for every REUSE schedules: subscriptions cancelled mid-read may leave its connections
        # taken (the pool then raises MaxConnectionsError).
        if self.cluster is not None and self.schedules % REUSE == 0:
            await self.cluster.close()
            self.cluster = None
        if self.cluster is None:
            self.cluster = Cluster(self.settings)
        await self.cluster.verify_partitions()  # records the layout again after the flush
        self.schedules += 1
        self.adapter = FeedAdapter(self.cluster)
        await self.adapter.start()
        schedule = Schedule(self, seed, verbose)
        try:
            failures = await schedule.play()
        finally:
            await schedule.close()
            await self.adapter.close()
            await cancel_leftovers()
        tokens = [info.token for info in schedule.tokens]
        if tokens:
            self.foreign = [tokens[-1], *self.foreign[:4]]
        if verbose:
            print(f"seed {seed}: {dict(schedule.counter)}")
        return failures

    def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self.worker_cluster.close(), self._loop).result(timeout=2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)
        self.node.close()


async def cancel_leftovers() -> None:
    """Cancel every task a schedule left behind (a tail reader whose cancellation a closing connection turned
    into an error it retries would otherwise poll a closed client for ever, slowing every later schedule)."""
    current = asyncio.current_task()
    for _ in range(40):
        leftovers = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
        if not leftovers:
            return
        for task in leftovers:
            task.cancel()
        await asyncio.wait(leftovers, timeout=0.05)


def pick_users() -> list[str]:
    """Three users per partition."""
    users: list[str] = []
    counts = Counter[int]()
    for i in range(1000):
        user = f"u{i}"
        partition = keys.partition_of(user, PARTITIONS)
        if counts[partition] < 3:
            counts[partition] += 1
            users.append(user)
    return users


@dataclass
class Summary:
    runs: int = 0
    failed: dict[int, list[Failure]] = field(default_factory=dict)
    seconds: float = 0.0

    def by_class(self) -> Counter[int]:
        return Counter(defect for failures in self.failed.values() for defect in {f.defect for f in failures})

    def by_kind(self) -> Counter[tuple[int, str]]:
        return Counter(kind for failures in self.failed.values() for kind in {(f.defect, f.kind) for f in failures})

    def report(self) -> str:
        lines = [f"{len(self.failed)} of {self.runs} schedules failed ({self.seconds:.1f} s)"]
        for defect, count in sorted(self.by_class().items()):
            lines.append(f"  defect {defect} ({CLASSES[defect]}): {count} schedules")
        for (defect, kind), count in sorted(self.by_kind().items()):
            seeds = [seed for seed, failures in self.failed.items() if any(f.kind == kind for f in failures)]
            lines.append(f"    [{defect}] {kind}: {count} (seeds {seeds[:6]})")
        for seed, failures in list(self.failed.items())[:3]:
            lines.append(f"  seed {seed}: [{failures[0].defect}] {failures[0].kind}: {failures[0].detail}")
        return "\n".join(lines)


async def run_seeds(
    url: str, seeds: Iterable[int], verbose: bool = False, progress: bool = False, steps: tuple[int, int] = STEPS
) -> Summary:
    harness = Harness(url, steps)
    summary = Summary()
    started = time.monotonic()
    try:
        for seed in seeds:
            try:
                failures = await harness.schedule(seed, verbose)
            except Exception as error:  # noqa: BLE001  # the next schedules still run; the summary says what broke
                failures = [Failure(0, "harness error", f"{type(error).__name__}: {error}"[:300])]
            summary.runs += 1
            if progress:
                first = f": [{failures[0].defect}] {failures[0].kind}: {failures[0].detail}" if failures else ""
                print(f"seed {seed}: {len(failures)} failures{first}", file=sys.stderr, flush=True)
            if failures:
                summary.failed[seed] = failures
    finally:
        # Bounded: a client whose blocking reads were cancelled may take its time to close; the node goes anyway.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                if harness.cluster is not None:
                    await harness.cluster.close()
        harness.close()
    summary.seconds = time.monotonic() - started
    return summary


def run_share(seeds: list[int], steps: tuple[int, int]) -> Summary:
    """Some of the seeds on a node of this process's own (for run_parallel)."""
    logging.basicConfig(level=logging.ERROR)
    cancellation.install()  # as every service does: a cancelled task stays cancelled (Python 3.11)
    with one_node() as node:
        return asyncio.run(run_seeds(node.url, seeds, steps=steps))


def run_parallel(seeds: list[int], steps: tuple[int, int] = STEPS, workers: int = 2) -> Summary:
    """The seeds spread over processes, each with a node of its own (the client side is the slow part)."""
    started = time.monotonic()
    summary = Summary()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for share in pool.map(run_share, [seeds[i::workers] for i in range(workers)], [steps] * workers):
            summary.runs += share.runs
            summary.failed.update(share.failed)
    summary.failed = dict(sorted(summary.failed.items()))
    summary.seconds = time.monotonic() - started
    return summary


@contextlib.contextmanager
def one_node() -> Iterator[OneNodeCluster]:
    directory = Path(tempfile.mkdtemp(prefix="feed-model-"))
    node = OneNodeCluster(directory)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, help="replay this schedule only")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true", help="print every step")
    parser.add_argument("--progress", action="store_true", help="a line per schedule on stderr")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the node is stopped on a timeout too
    logging.basicConfig(level=logging.ERROR)  # the feed's warnings about the failovers made on purpose
    cancellation.install()  # as every service does: a cancelled task stays cancelled (Python 3.11)
    seeds = [options.seed] if options.seed is not None else range(options.first_seed, options.first_seed + options.runs)
    with one_node() as node:
        summary = asyncio.run(run_seeds(node.url, seeds, options.verbose or options.seed is not None, options.progress))
    print(summary.report())
    for seed, failures in summary.failed.items() if options.seed is not None else ():
        for failure in failures:
            print(f"seed {seed}: [{failure.defect}] {failure.kind}: {failure.detail}")
    sys.exit(1 if summary.failed else 0)


if __name__ == "__main__":
    main()
