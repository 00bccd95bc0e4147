"""The change feed behind WatchProfileEvents: one tail reader per partition, shared by every subscriber.

While anyone subscribes, each partition's stream is read by one blocking XREAD per process, and every
batch goes to every subscriber's bounded queue together with the entry it follows. A subscriber whose
position is behind that entry (it resumed from a token, or its queue started after the batch's
predecessor) first reads the missing entries itself through scripts/events_after.lua. So a subscriber
sees each entry of a partition once and in order.

A gap is reported (Trimmed), never skipped. A position is an entry's id and its offset: how many entries
the stream had ever had once it was added (XINFO's entries-added). Entries only leave a stream from its
head, so the stream still holds everything after a position exactly when the position's offset is at
least entries-added minus length. (XINFO's max-deleted-entry-id would be simpler, but XTRIM leaves it alone.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from common import keys
from common.cluster import CLUSTER_FAILURES, Cluster
from common.errors import InvalidArgument, ServiceError
from common.redis_internals import closed_under_command
from common.stream_ids import StreamId, format_id, parse_id
from common.streams import StreamClock
from common.validation import MAX_USERS, check_user

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).parent / "scripts"
PAGE = 500  # entries per XREAD of the tail and per catch-up read
RETRY_S = 0.5
CHANGES = ("create", "update", "delete")
TOKEN_PREFIX = "v1."


@dataclass(frozen=True)
class Event:
    id: StreamId
    offset: int  # entries ever added to the partition's stream, up to and including this one
    partition: int
    user: str
    type: str
    ts_ms: int


class Trimmed(ServiceError):
    """Events after the subscriber's position are gone from the stream (OUT_OF_RANGE)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "EVENTS_TRIMMED"


class FellBehind(ServiceError):
    """The subscriber's queue overflowed: it reads more slowly than events arrive (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "SUBSCRIBER_FELL_BEHIND"
    resumable = True


class Position:
    """The last entry a subscriber has passed, per partition (its id and offset): what a resume token encodes."""

    def __init__(self, ids: Iterable[StreamId], offsets: Iterable[int]) -> None:
        self.ids = list(ids)
        self.offsets = list(offsets)

    def advance(self, event: Event) -> None:
        self.ids[event.partition] = event.id
        self.offsets[event.partition] = event.offset

    def token(self) -> str:
        packed = ",".join(f"{format_id(i)}:{offset}" for i, offset in zip(self.ids, self.offsets, strict=True)).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str, partitions: int) -> Position:
        invalid = InvalidArgument(
            "resume_token is not a token this service issued: pass the resume_token of a message received, "
            "or none to start from now",
            field="resume_token",
        )
        if not token.startswith(TOKEN_PREFIX) or len(token) > 64 * partitions:
            raise invalid
        body = token[len(TOKEN_PREFIX) :]
        try:
            parts = [
                part.split(":") for part in base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().split(",")
            ]
            ids, offsets = [parse_id(entry) for entry, _ in parts], [int(offset) for _, offset in parts]
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise invalid from None
        if len(ids) != partitions:
            raise InvalidArgument(
                f"resume_token covers {len(ids)} partitions but this deployment has {partitions}; "
                "start without a token",
                field="resume_token",
            )
        return cls(ids, offsets)


def event_filter(users: Iterable[str], types: Iterable[str]) -> Callable[[Event], bool]:
    """Which events a subscriber wants; checks the filters (InvalidArgument names what is wrong)."""
    wanted_users = {check_user(user, field="users") for user in users}
    if len(wanted_users) > MAX_USERS:
        raise InvalidArgument(f"too many users to filter by: {len(wanted_users)}, at most {MAX_USERS}", field="users")
    wanted_types = set(types) or set(CHANGES)
    unknown = wanted_types - set(keys.EVENT_TYPES)
    if unknown:
        raise InvalidArgument(
            f"unknown event type {sorted(unknown)[0][:40]!r}: use {', '.join(keys.EVENT_TYPES)}", field="types"
        )
    if wanted_users:
        return lambda event: event.type in wanted_types and event.user in wanted_users
    return lambda event: event.type in wanted_types


@dataclass(frozen=True)
class Batch:
    partition: int
    after: StreamId  # the id of the entry before the first of these
    after_offset: int
    events: list[Event]


class Subscription:
    """A subscriber's queue of batches, bounded in events: beyond `limit` it is dropped and marked overflowed."""

    def __init__(self, limit: int, clock: StreamClock) -> None:
        self.limit = limit
        self.clock = clock
        self.batches: deque[Batch] = deque()
        self.queued = 0
        self.overflowed = False

    def push(self, batch: Batch) -> None:
        if self.overflowed:
            return
        if self.queued + len(batch.events) > self.limit:
            self.overflowed = True
            self.batches.clear()
            self.queued = 0
            self.clock.stop(
                FellBehind(f"the subscriber fell more than {self.limit} events behind (it reads too slowly)")
            )
        else:
            self.batches.append(batch)
            self.queued += len(batch.events)
            self.clock.wake.set()

    def pop(self) -> Batch | None:
        if not self.batches:
            return None
        batch = self.batches.popleft()
        self.queued -= len(batch.events)
        return batch


class EventsFeed:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.partitions = cluster.settings.partitions
        self.queue_limit = cluster.settings.stream_queue
        # A blocking read must return before the client's socket timeout fires.
        self.block_ms = max(cluster.settings.redis_timeout_ms // 2, 10)
        self._events_after = cluster.script(SCRIPTS / "events_after.lua")
        self.tail: list[StreamId] = []  # per partition, the last entry the tail reader has seen
        self.tail_offsets: list[int] = []
        self.subscriptions: set[Subscription] = set()
        self._tailers: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()

    async def watch(
        self, clock: StreamClock, position: Position | None, wanted: Callable[[Event], bool]
    ) -> AsyncGenerator[tuple[Event | None, Position]]:
        """Yield (event, position after it) for every wanted event, and (None, position) for heartbeats:
        the first at once, then whenever the clock says one is due."""
        subscription = await self._subscribe(clock)
        try:
            if position is None:
                position = Position(self.tail, self.tail_offsets)
            yield None, position
            for partition, (tail, tail_offset) in enumerate(zip(list(self.tail), list(self.tail_offsets), strict=True)):
                async for event in self._catch_up(position, partition, tail, tail_offset, wanted):
                    yield event, position
            while True:
                while (batch := subscription.pop()) is not None:
                    async for event in self._deliver(position, batch, wanted):
                        yield event, position
                if not await clock.wait():  # raises FellBehind once the queue overflowed
                    yield None, position
        finally:
            self._unsubscribe(subscription)

    async def _deliver(self, position: Position, batch: Batch, wanted: Callable[[Event], bool]) -> AsyncIterator[Event]:
        partition = batch.partition
        if position.ids[partition] < batch.after:
            async for event in self._catch_up(position, partition, batch.after, batch.after_offset, wanted):
                yield event
        for event in batch.events:
            if event.id > position.ids[partition]:
                position.advance(event)
                if wanted(event):
                    yield event

    async def _catch_up(
        self, position: Position, partition: int, until: StreamId, until_offset: int, wanted: Callable[[Event], bool]
    ) -> AsyncIterator[Event]:
        """The entries after the position up to `until`, read from the stream; Trimmed if some are gone."""
        stream = keys.events_key(partition)
        while position.ids[partition] < until:
            after, offset = position.ids[partition], position.offsets[partition]
            added, length, entries = await self.cluster.run(
                self._events_after, [stream], [format_id(after), format_id(until), PAGE]
            )
            if not added - length <= offset <= added:  # entries after it were trimmed (or the stream was reset)
                raise Trimmed(
                    f"events of partition {partition} after the resume token were trimmed (they are kept for "
                    f"PROFILEMESH_EVENTS_RETENTION_S after being aggregated); start again without a token and "
                    f"re-read whatever you derive from the events"
                )
            if not entries:
                position.ids[partition], position.offsets[partition] = until, until_offset  # nothing was there
                return
            for raw_id, flat in entries:  # a script's reply: fields as a flat list
                offset += 1
                event = _event(partition, raw_id, dict(zip(flat[::2], flat[1::2], strict=True)), offset)
                position.advance(event)
                if wanted(event):
                    yield event

    async def _subscribe(self, clock: StreamClock) -> Subscription:
        async with self._starting:
            if not self._tailers:
                lasts = await asyncio.gather(*(self._last_entry(p) for p in range(self.partitions)))
                self.tail, self.tail_offsets = [entry for entry, _ in lasts], [offset for _, offset in lasts]
                self._tailers = [
                    asyncio.create_task(self._follow(p), name=f"events-tail-{p}") for p in range(self.partitions)
                ]
            subscription = Subscription(self.queue_limit, clock)
            self.subscriptions.add(subscription)
            return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)
        if not self.subscriptions:
            for task in self._tailers:
                task.cancel()
            self._tailers = []

    async def _last_entry(self, partition: int) -> tuple[StreamId, int]:
        """The id and offset of the partition's last entry, in one command so they belong together."""
        async with self.cluster.bounded() as client:
            stream = keys.events_key(partition)
            if not await client.exists(stream):
                return (0, 0), 0
            info = await client.xinfo_stream(stream)
        return parse_id(info["last-generated-id"]), int(info["entries-added"])

    async def _follow(self, partition: int) -> None:
        """Tail one partition's stream and hand every batch to every subscriber."""
        stream = keys.events_key(partition)
        while True:
            try:
                # Blocking reads hold a connection for up to block_ms; they bypass the concurrency
                # bound (the client keeps a connection for each partition beyond it).
                client = await self.cluster.connected()
                async with closed_under_command():  # outside the bound, so it converts a closed connection itself
                    reply = cast(  # RESP2, bytes: [[stream, [(id, fields), ...]]], or None when the block ran out
                        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                        await client.xread({stream: format_id(self.tail[partition])}, count=PAGE, block=self.block_ms),
                    )
            except CLUSTER_FAILURES as error:
                log.warning("events tail of partition %d: cluster unavailable: %r", partition, error)
                await asyncio.sleep(RETRY_S)
                continue
            for _, entries in reply or ():
                if not entries:
                    continue
                # Offsets count on from the last entry seen: entries leave only from the head, never between.
                after, after_offset = self.tail[partition], self.tail_offsets[partition]
                events = [
                    _event(partition, raw_id, fields, after_offset + n) for n, (raw_id, fields) in enumerate(entries, 1)
                ]
                batch = Batch(partition, after, after_offset, events)
                self.tail[partition], self.tail_offsets[partition] = events[-1].id, events[-1].offset
                for subscription in self.subscriptions:
                    subscription.push(batch)


def _event(partition: int, raw_id: bytes, fields: dict[bytes, bytes], offset: int) -> Event:
    return Event(
        id=parse_id(raw_id),
        offset=offset,
        partition=partition,
        user=fields[b"user"].decode(),
        type=fields[b"type"].decode(),
        ts_ms=int(fields[b"ts"]),
    )
