"""The change feed behind WatchProfileEvents: one tail reader per process, shared by every subscriber.

While anyone subscribes, the process follows every partition's stream, and every batch it reads goes to
every subscriber's bounded queue together with the position it was read from. It waits for news per node,
not per partition: one sharded subscription per primary to the partitions' wake channels (keys.wake_key,
common/storage/wakes.py), as the aggregator does. A tail read that reaches a stream's end arms the
partition's wake flag in the same script (events_after.lua), so the next append publishes a wake-up
(helpers.lua), and an append can't slip in between; the partitions woken on one tick read together, one
pipeline per primary. Every partition counts as woken when its subscription is (re)made, and all are read
every PROFILEMESH_STREAM_QUIET_CHECK_S anyway: what a lost wake-up (a flag lost in a failover) can delay.
A subscriber delivers a batch as it is only when the batch starts exactly at its own position; otherwise
(it resumed from a token, its queue overflowed, the tail reader found a gap) it reads from the stream
itself through scripts/events_after.lua until it is level again. So a subscriber sees each entry of a
partition once and in order, or its stream ends with a status that says what to do.

A position is, per partition, the last entry passed: its id, its offset `n` (the stream's entries-added
count once it was in) and its time. Every read of the stream first checks the position against the
stream as it is now, in the same script: the entry must be there with that id and time, at an offset the
stream still holds, or be the last one trimmed; the offsets of what it reads follow from the position's
(or from the head's, entries-added - length + 1), so no offset is ever counted on from an unchecked base.
A position older than the stream's head means events were trimmed (Trimmed: OUT_OF_RANGE,
EVENTS_TRIMMED); a position the stream no longer holds as it was means a failover lost entries the feed
had already handed out, and may have handed their ids out again (HistoryChanged: OUT_OF_RANGE,
EVENTS_HISTORY_CHANGED). Nothing is ever skipped silently.

A resume token is the position, the deployment's identity and a MAC under a secret the deployment keeps
in the cluster (keys.DEPLOYMENT_KEY): a token is checked completely before anything reaches the streams,
and one that was not issued by this deployment, or was altered, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from common.errors import HistoryChanged, InvalidArgument, StorageError, Trimmed
from common.rpc.streams import StreamClock
from common.rpc.validation import MAX_USERS, check_user
from common.storage import keys
from common.storage.cluster import Cluster
from common.storage.replies import text
from common.storage.stream_ids import StreamId, format_id, parse_id
from profile_svc.feed_checkpoints import (
    MAX_I64,
    START_OVER,
    Anchor,
    Checkpoints,
    Recorded,
    Version,
    anchor_text,
    is_chain,
    parse_anchor,
    parse_decimal,
)

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).parent / "scripts"
PAGE = 1000  # entries per tail read of the stream (a millisecond or two of script)
QUIET_CHECK_S = 10.0  # PROFILEMESH_STREAM_QUIET_CHECK_S's default
CATCH_UP_PAGE = 2000  # entries a catch-up scans per read; it returns only those its subscriber wants
RETRY_S = 0.5
RETENTION_S = 600.0  # PROFILEMESH_EVENTS_RETENTION_S's default
TOKEN_PREFIX = "v3."  # a token naming recorded tail states (feed_checkpoints.py)
FULL_TOKEN_PREFIX = "v2."  # a token carrying every partition's anchor: when no recorded state describes it
MAC_BYTES = 16
# What a v3 token may carry: runs of partitions, each at a recorded state, and partitions standing elsewhere.
MAX_SEGMENTS = 4
MAX_OVERRIDES = 32
# Batches a subscriber's queue holds, whatever they contain: beyond it, it reads from the stream instead.
MAX_QUEUED_BATCHES = 10_000


@dataclass(frozen=True)
class Event:
    id: StreamId
    n: int  # the entry's offset: entries ever added to the partition's stream, up to and including this one
    partition: int
    user: str
    type: str
    ts_ms: int

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.id, self.n, self.ts_ms)


def _trimmed(partition: int) -> Trimmed:
    return Trimmed(
        f"events of partition {partition} after the resume token were trimmed (they are kept for "
        f"PROFILEMESH_EVENTS_RETENTION_S after being aggregated); {START_OVER}"
    )


def _changed(partition: int) -> HistoryChanged:
    return HistoryChanged(
        f"the history of partition {partition} changed under the resume token (a failover lost events that "
        f"had been delivered); {START_OVER}"
    )


Segments = list[tuple[int, Version | None]]  # (first partition, the recorded state the run stands at, if any)


class Tokens:
    """Resume tokens of one deployment: a position, the deployment's identity and a MAC over both. The identity
    names the layout's generation too (none in the first, as before resizes): a position in the streams of a
    layout since resized leads nowhere. A position is carried as recorded states (v3, feed_checkpoints.py)
    and the few partitions that stand elsewhere, or, when no recorded state describes it, whole (v2)."""

    def __init__(self, secret: bytes, partitions: int, generation: int = 0) -> None:
        self._secret = secret
        self.partitions = partitions
        named = b"profilemesh deployment " + secret + (f" generation {generation}".encode() if generation else b"")
        self.identity = hashlib.sha256(named).hexdigest()[:12]

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:MAC_BYTES]

    def _signed(self, prefix: str, body: bytes) -> str:
        return prefix + _b64(body) + "." + _b64(self._mac(body))

    def issue(self, anchors: Sequence[Anchor]) -> str:
        """A v2 token: every partition's anchor."""
        return self._signed(FULL_TOKEN_PREFIX, (self.identity + ";" + ",".join(map(anchor_text, anchors))).encode())

    def issue_compact(self, segments: Sequence[tuple[int, Version]], overrides: dict[int, Anchor]) -> str:
        """A v3 token: runs of partitions at recorded states, then the partitions standing elsewhere."""
        runs = ",".join(f"{start}.{version.chain}.{version.number}" for start, version in segments)
        moved = ",".join(f"{partition}={anchor_text(anchor)}" for partition, anchor in sorted(overrides.items()))
        return self._signed(TOKEN_PREFIX, f"{self.identity};{runs};{moved}".encode())

    def check(self, token: SignedToken) -> SignedToken:
        """A well-formed token, once its identity and MAC say this deployment issued it."""
        if token.identity != self.identity.encode():
            raise _invalid(
                "resume_token was issued by another profilemesh deployment, or before its partitions were resized"
            )
        if not hmac.compare_digest(token.mac, self._mac(token.body)):
            raise _invalid("resume_token was altered: it is not a token this deployment issued")
        return token


class SignedToken(NamedTuple):
    body: bytes
    identity: bytes
    anchors: list[Anchor]  # v2: every partition's; v3: the overrides'
    mac: bytes
    segments: list[tuple[int, Version]] = []  # v3 only
    overridden: list[int] = []  # v3: the partitions of `anchors`


def read_token(token: str, partitions: int) -> SignedToken:
    """A token taken apart and every number range-checked, without the deployment's secret, so malformed
    input is refused even while the cluster is down; InvalidArgument naming resume_token."""
    not_ours = _invalid("resume_token is not a token this service issued")
    compact = token.startswith(TOKEN_PREFIX)
    # The largest numbers: a run is 60 characters once encoded, an override 120.
    longest = 64 + 60 * MAX_SEGMENTS + 120 * MAX_OVERRIDES if compact else 120 * partitions + 64
    if not (compact or token.startswith(FULL_TOKEN_PREFIX)) or len(token) > longest:
        raise not_ours
    body_text, _, mac_text = token[len(TOKEN_PREFIX) :].partition(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
        identity, _, packed = body.partition(b";")
        if compact:
            overrides, segments, overridden = _compact_position(packed.decode(), partitions)
            return SignedToken(body, identity, overrides, mac, segments, overridden)
        anchors = [parse_anchor(part) for part in packed.decode().split(",")]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise not_ours from None
    if len(anchors) != partitions:
        raise _invalid(
            f"resume_token covers {len(anchors)} partitions but this deployment has {partitions} (it was resized: "
            "subscribe without a token)"
        )
    return SignedToken(body, identity, anchors, mac)


def _compact_position(packed: str, partitions: int) -> tuple[list[Anchor], list[tuple[int, Version]], list[int]]:
    """A v3 position's overrides' anchors, runs and overridden partitions; ValueError unless each is in range,
    in order and canonical."""
    runs_text, moved_text = packed.split(";")
    segments = []
    for run in runs_text.split(","):
        start, chain, number = run.split(".")
        if not is_chain(chain):
            raise ValueError("not a chain")
        segments.append((parse_decimal(start, partitions - 1), Version(chain, parse_decimal(number, MAX_I64))))
    starts = [start for start, _ in segments]
    if starts[0] != 0 or starts != sorted(set(starts)) or len(segments) > MAX_SEGMENTS:
        raise ValueError("runs out of order")
    overridden, anchors = [], []
    for part in moved_text.split(",") if moved_text else []:
        partition, _, anchor = part.partition("=")
        overridden.append(parse_decimal(partition, partitions - 1))
        anchors.append(parse_anchor(anchor))
    if overridden != sorted(set(overridden)) or len(overridden) > MAX_OVERRIDES:
        raise ValueError("overrides out of order")
    return anchors, segments, overridden


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:  # the last character's spare bits set: a second spelling of the same bytes
        raise ValueError("not canonical base64url")
    return data


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(
        f"{message}: pass the resume_token of a message received from this deployment, or none to start from now",
        field="resume_token",
    )


class Position:
    """The last entry a subscriber has passed, per partition: what a resume token encodes.

    Besides every partition's anchor it keeps a description a token can carry: runs of partitions each standing
    where the tail reader stood at a recorded version (`segments`; a run with no version can't be carried), and
    the partitions `moved` since, which stand wherever their anchors say. For a subscriber level with the tail
    that is one run and at most one partition; one catching up has the runs it is caught up to and from."""

    def __init__(
        self, anchors: Iterable[Anchor], tokens: Tokens, segments: Segments | None = None, moved: Iterable[int] = ()
    ) -> None:
        self.anchors = list(anchors)
        self.tokens = tokens
        # Invariant: a partition not in `moved` stands where its run's version has it.
        self.segments: Segments = segments or [(0, None)]
        self.moved = set(moved)

    def advance(self, event: Event) -> None:
        self.move(event.partition, event.anchor)

    def move(self, partition: int, anchor: Anchor) -> None:
        self.anchors[partition] = anchor
        self.moved.add(partition)

    def meet(self, batch: Batch) -> None:
        """Before a batch that starts a chain: a position standing at its base takes that version (the one
        comparison of every partition, once a chain)."""
        if batch.base is not None and batch.previous is not None and self.anchors == batch.base:
            self.segments, self.moved = [(0, batch.previous)], set()

    def passed(self, batch: Batch) -> None:
        """After a batch: a position that stood at the tail's version before it, but for the batch's partition,
        and now stands where the tail does there, stands at the tail's version after it. After one not
        recorded, tokens carry every partition until a chain starts again (meet): the state they would name
        may be the one lost."""
        partition = batch.partition
        if batch.version is None:  # the tail's states are not being recorded: no state may describe this one
            self.segments = [(0, None)]
        elif (
            self.segments == [(0, batch.previous)]
            and self.moved <= {partition}
            and self.anchors[partition] == batch.until
        ):
            self.segments, self.moved = [(0, batch.version)], set()

    def caught_up(self, partition: int, target: Anchor, version: Version | None) -> None:
        """Every partition up to this one was brought, in order, to the targets: `version`'s state. This one
        stands at `target` unless it could not reach it."""
        if self.anchors[partition] == target:
            self.moved.discard(partition)
        else:
            self.moved.add(partition)
        end = partition + 1
        ends = [start for start, _ in self.segments[1:]] + [len(self.anchors)]
        runs = zip(self.segments, ends, strict=True)
        later = [(max(start, end), run) for (start, run), run_end in runs if run_end > end]
        if later and later[0][1] == version:
            later.pop(0)
        self.segments = [(0, version), *later]

    def token(self) -> str:
        runs = [(start, version) for start, version in self.segments if version is not None]
        if len(runs) == len(self.segments) <= MAX_SEGMENTS and len(self.moved) <= MAX_OVERRIDES:
            return self.tokens.issue_compact(runs, {partition: self.anchors[partition] for partition in self.moved})
        return self.tokens.issue(self.anchors)


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants: its types, and its users (none: everyone's). A catch-up passes it to
    the stream's script, so what a subscriber filters out is not even sent to the service."""

    types: frozenset[str]
    users: frozenset[str]

    def __call__(self, event: Event) -> bool:
        return event.type in self.types and (not self.users or event.user in self.users)

    def script_args(self) -> list[str]:
        return [",".join(sorted(self.types)), *sorted(self.users)]


def event_filter(users: Iterable[str], types: Iterable[str]) -> EventFilter:
    """Which events a subscriber wants; checks the filters (InvalidArgument names what is wrong)."""
    wanted_users = {check_user(user, field="users") for user in users}
    if len(wanted_users) > MAX_USERS:
        raise InvalidArgument(f"too many users to filter by: {len(wanted_users)}, at most {MAX_USERS}", field="users")
    wanted_types = set(types) or set(keys.CHANGE_TYPES)
    unknown = wanted_types - set(keys.EVENT_TYPES)
    if unknown:
        raise InvalidArgument(
            f"unknown event type {sorted(unknown)[0][:40]!r}: use {', '.join(keys.EVENT_TYPES)}", field="types"
        )
    return EventFilter(frozenset(wanted_types), frozenset(wanted_users))


@dataclass(frozen=True)
class Read:
    """What one checked read of a stream found."""

    verdict: str  # ok, trimmed or changed (events_after.lua)
    events: list[Event]
    scanned: int  # entries the script went through, wanted or not
    scanned_to: Anchor | None  # the last of them: where a reader that filtered stands after this read
    last: Anchor  # the stream's last entry (or the last one trimmed, when none is left)


@dataclass(frozen=True)
class Batch:
    partition: int
    after: Anchor | None  # the position the tail reader read these from; None when it found a gap or a change
    events: list[Event]
    until: Anchor  # where the tail reader stands after it: a subscriber not level with it reads up to here
    # The tail reader's recorded versions before and after it (feed_checkpoints.py); None: not recorded.
    previous: Version | None = None
    version: Version | None = None
    base: list[Anchor] | None = None  # the state `previous` names, when it starts a chain (Position.meet)


class Subscription:
    """A subscriber's queue of batches, bounded in the events it wants (and in batches). Beyond that its
    queue is dropped and it reads from the stream instead, as a resumed subscriber does."""

    def __init__(self, limit: int, clock: StreamClock, wanted: Callable[[Event], bool]) -> None:
        self.limit = limit
        self.clock = clock
        self.wanted = wanted
        self.batches: deque[tuple[Batch, int]] = deque()
        self.queued = 0  # wanted events in the queue
        self.overflowed = False

    def push(self, batch: Batch) -> None:
        if self.overflowed:
            return
        wanted = sum(1 for event in batch.events if self.wanted(event))
        if self.queued + wanted > self.limit or len(self.batches) >= MAX_QUEUED_BATCHES:
            self.overflowed = True
            self.batches.clear()
            self.queued = 0
        else:
            self.batches.append((batch, wanted))
            self.queued += wanted
        self.clock.wake.set()

    def pop(self) -> Batch | None:
        if not self.batches:
            return None
        batch, wanted = self.batches.popleft()
        self.queued -= wanted
        return batch


class EventsFeed:
    def __init__(
        self,
        cluster: Cluster,
        partitions: int,
        queue_limit: int,
        quiet_check_s: float = QUIET_CHECK_S,
        retention_s: float = RETENTION_S,
    ) -> None:
        """`queue_limit`: events a subscriber's queue holds (PROFILEMESH_STREAM_QUEUE) before it reads the stream;
        `quiet_check_s`: how often every partition is read, woken or not (PROFILEMESH_STREAM_QUIET_CHECK_S);
        `retention_s`: how long the events stay (PROFILEMESH_EVENTS_RETENTION_S), and the tokens' positions."""
        self.cluster = cluster
        self.partitions = partitions
        self.queue_limit = queue_limit
        self.quiet_check_s = quiet_check_s
        # It reads, and arms a wake flag at most: running it twice does no harm.
        self._events_after = cluster.script(SCRIPTS / "events_after.lua", repeatable=True)
        self.tail: list[Anchor] = []  # per partition, the last entry the tail reader has passed
        self.tail_version: Version | None = None  # the recorded version `tail` is, if any
        self.checkpoints = Checkpoints(cluster, partitions, retention_s)
        # Tail reads' batches waiting to be recorded and handed out, each with what its reader awaits.
        self._outbox: list[tuple[Batch, asyncio.Future[None]]] = []
        self._outbox_filled = asyncio.Event()
        self.subscriptions: set[Subscription] = set()
        # While anyone subscribes: the wake-up subscriptions, the tail reader and its quiet checks.
        self._tailers: list[asyncio.Task[None]] = []
        self._starting = asyncio.Lock()
        self._tokens: Tokens | None = None
        self._due: set[int] = set()  # partitions woken (or with more to read) that the tail reader has yet to read
        self._nudge = asyncio.Event()  # set when a partition became due

    async def tokens(self) -> Tokens:
        """This deployment's tokens; its secret is recorded in the cluster by the first process to need it."""
        if self._tokens is None:
            async with self.cluster.bounded() as client:
                secret = await client.get(keys.DEPLOYMENT_KEY)
                if secret is None:
                    # SETNX: what the user is allowed, so the secret can be made once and never replaced.
                    await client.setnx(keys.DEPLOYMENT_KEY, secrets.token_hex(32))
                    secret = await client.get(keys.DEPLOYMENT_KEY)
            if not secret:
                raise ConnectionError("the deployment's identity could not be read from the cluster")
            secret_bytes = secret if isinstance(secret, bytes) else str(secret).encode()
            self._tokens = Tokens(secret_bytes, self.partitions, self.cluster.generation)
        return self._tokens

    async def resume(self, token: str) -> Position:
        """The position a resume token holds; InvalidArgument (resume_token) unless this deployment issued it."""
        signed = read_token(token, self.partitions)
        tokens = await self.tokens()
        checked = tokens.check(signed)
        if not checked.segments:
            return Position(checked.anchors, tokens)
        anchors: list[Anchor] = []
        ends = [start for start, _ in checked.segments[1:]] + [self.partitions]
        for (start, version), end in zip(checked.segments, ends, strict=True):
            anchors += (await self.checkpoints.load(version))[start:end]
        for partition, anchor in zip(checked.overridden, checked.anchors, strict=True):
            anchors[partition] = anchor
        return Position(anchors, tokens, list(checked.segments), checked.overridden)

    async def watch(
        self, clock: StreamClock, position: Position | None, wanted: Callable[[Event], bool]
    ) -> AsyncGenerator[tuple[Event | None, Position]]:
        """Yield (event, position after it) for every wanted event, and (None, position) for heartbeats:
        the first at once, then whenever the clock says one is due (also while catching up)."""
        tokens = await self.tokens()
        # The tail as the subscription starts: every batch queued from now on starts at or after it.
        subscription, targets, version = await self._subscribe(clock, wanted)
        try:
            if position is None:
                position = Position(targets, tokens, [(0, version)])
            yield None, position
            while True:
                for partition, target in enumerate(targets):
                    # Level with the tail, whose reads are checked reads: nothing to read, and what happens to the
                    # stream from here reaches the subscriber as batches. (A new subscription is level everywhere:
                    # at 4,096 partitions, 4,096 round trips saved before its first event.)
                    if position.anchors[partition] != target:
                        async for event in self._catch_up(position, partition, target.id, clock, wanted):
                            yield event, position
                    position.caught_up(partition, target, version)
                while not subscription.overflowed and (batch := subscription.pop()) is not None:
                    async for event in self._deliver(position, batch, clock, wanted):
                        yield event, position
                    if clock.heartbeat_due():  # a long queue of unwanted events still shows progress
                        yield None, position
                if subscription.overflowed:  # its queue was dropped: read from the stream up to the tail
                    subscription.overflowed = False
                    targets, version = list(self.tail), self.tail_version
                    continue
                targets = []
                if not await clock.wait():
                    yield None, position
        finally:
            self._unsubscribe(subscription)

    async def _deliver(
        self, position: Position, batch: Batch, clock: StreamClock, wanted: Callable[[Event], bool]
    ) -> AsyncIterator[Event | None]:
        partition = batch.partition
        position.meet(batch)
        if batch.after is not None and batch.after == position.anchors[partition]:
            for event in batch.events:
                position.advance(event)
                if wanted(event):
                    yield event
        else:
            # Not level with the batch: the stream itself says what comes after the position, up to where the tail
            # reader stands (after a failover that may be past entries no batch carried).
            async for caught_up in self._catch_up(position, partition, batch.until.id, clock, wanted):
                yield caught_up
        position.passed(batch)

    async def _catch_up(
        self,
        position: Position,
        partition: int,
        until: StreamId,
        clock: StreamClock,
        wanted: Callable[[Event], bool],
    ) -> AsyncIterator[Event | None]:
        """The entries after the position up to `until`, read from the stream, and None whenever a heartbeat
        is due; Trimmed or HistoryChanged when the position no longer leads there. Reads at least once, so
        the position is checked even when there is nothing to read."""
        first = True
        while first or position.anchors[partition].id < until:
            first = False
            read = await self._read(partition, position.anchors[partition], until, CATCH_UP_PAGE, wanted)
            if read.verdict == "trimmed":
                raise _trimmed(partition)
            if read.verdict == "changed":
                raise _changed(partition)
            for event in read.events:
                position.advance(event)
                if wanted(event):
                    yield event
            if read.scanned_to is not None:
                position.move(partition, read.scanned_to)
            if read.scanned < CATCH_UP_PAGE:
                return
            if clock.heartbeat_due():
                yield None

    async def _read(
        self,
        partition: int,
        after: Anchor,
        until: StreamId | str,
        count: int,
        wanted: Callable[[Event], bool] | None = None,
        tail: bool = False,
    ) -> Read:
        """One checked read of the stream after `after` (events_after.lua). With an EventFilter, the script
        returns only the entries it wants, and where its scan ended. A `tail` read arms the partition's wake
        flag when it reaches the stream's end, and shares a pipeline per primary with the others of its tick
        (outside the concurrency bound: at most one per partition is in flight, and they wake in crowds)."""
        filtering = wanted.script_args() if isinstance(wanted, EventFilter) else []
        reply = await self.cluster.run(
            self._events_after,
            self._stream_keys(partition, tail),
            [format_id(after.id), after.n, after.ts, until if isinstance(until, str) else format_id(until), count]
            + filtering,
            bounded=not tail,
            together=tail,
        )
        verdict, first_n, entries, scanned = text(reply[0]), int(reply[1]), reply[2], int(reply[4])
        last = _anchor_of(reply[3])
        if not filtering:
            events = _events(partition, entries, range(first_n, first_n + len(entries)))
            return Read(verdict, events, scanned, events[-1].anchor if events else None, last)
        end = reply[6]
        scanned_to = Anchor(parse_id(end[0]), first_n + scanned - 1, int(end[1])) if scanned else None
        return Read(verdict, _events(partition, entries, [int(n) for n in reply[5]]), scanned, scanned_to, last)

    def _stream_keys(self, partition: int, tail: bool = False) -> list[str]:
        """The keys events_after.lua takes: a tail read's with the wake flag it arms."""
        generation = self.cluster.generation
        stream = [keys.events_key(partition, generation), keys.trimmed_key(partition, generation)]
        return [*stream, keys.wake_key(partition, generation)] if tail else stream

    async def _last(self, partition: int) -> Anchor:
        """The stream's last entry; every partition's at once when the feed starts, one pipeline per primary."""
        reply = await self.cluster.run(
            self._events_after,
            self._stream_keys(partition),
            ["0-0", 0, 0, "+", 0],
            bounded=False,
            together=True,
        )
        return _anchor_of(reply[3])

    async def _subscribe(
        self, clock: StreamClock, wanted: Callable[[Event], bool]
    ) -> tuple[Subscription, list[Anchor], Version | None]:
        async with self._starting:
            if not self._tailers:
                self.tail = list(await asyncio.gather(*(self._last(p) for p in range(self.partitions))))
                self.checkpoints.chain = None  # a new chain: this state is no version of the last one
                recorded = await self.checkpoints.record(self.tail, [])
                self.tail_version = recorded.before if recorded else None
                self._due.clear()
                self._outbox.clear()
                self._tailers = [
                    asyncio.create_task(self._watch_wakes(), name="events-wakes"),
                    asyncio.create_task(self._follow(), name="events-tail"),
                    asyncio.create_task(self._publish(), name="events-publish"),
                    asyncio.create_task(self._quiet_checks(), name="events-quiet-checks"),
                ]
            subscription = Subscription(self.queue_limit, clock, wanted)
            self.subscriptions.add(subscription)
            return subscription, list(self.tail), self.tail_version

    def _unsubscribe(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)
        if not self.subscriptions:
            for task in self._tailers:
                task.cancel()
            self._tailers = []

    async def _watch_wakes(self) -> None:
        """Every partition's wake channel, one subscription per primary; each channel also counts as woken when
        its subscription is made (what was published before is lost)."""
        await self.cluster.watch_wakes(range(self.partitions), self._wake_up)

    def _wake_up(self, partition: int) -> None:
        self._due.add(partition)
        self._nudge.set()

    async def _quiet_checks(self) -> None:
        """Every partition is read every quiet_check_s, woken or not: a wake-up lost (a flag lost in a failover,
        a history rolled back with nothing appended since) costs that much delay at most."""
        while True:
            await asyncio.sleep(self.quiet_check_s)
            for partition in range(self.partitions):
                self._wake_up(partition)
            try:
                await self.checkpoints.keep_alive()
            except StorageError as error:
                log.warning("change-feed checkpoints: the current block's expiry was not renewed: %r", error)

    async def _follow(self) -> None:
        """Read every partition that is due, one read of each in flight at a time (its batches go out in order);
        those due on one tick start together, so their scripts share a pipeline per primary. A partition woken
        while its read is out is read again once that one is done."""
        reading: dict[int, asyncio.Task[bool]] = {}

        def done(partition: int, task: asyncio.Task[bool]) -> None:
            del reading[partition]
            if task.cancelled():
                return
            if task.exception() is not None:  # a defect: logged, and read again on its next wake-up
                log.error("events tail of partition %d failed", partition, exc_info=task.exception())
            elif task.result():
                self._wake_up(partition)
            elif partition in self._due:
                self._nudge.set()

        try:
            while True:
                await self._nudge.wait()
                self._nudge.clear()
                for partition in sorted(self._due - reading.keys()):
                    self._due.discard(partition)
                    task = asyncio.create_task(self._tail_read(partition), name=f"events-tail-{partition}")
                    reading[partition] = task
                    task.add_done_callback(functools.partial(done, partition))
        finally:
            for task in list(reading.values()):
                task.cancel()

    async def _tail_read(self, partition: int) -> bool:
        """Read what the partition's stream has past the tail and hand it out to every subscriber; True when
        there may be more to read at once (a full page, or after a failure, once RETRY_S has passed). The read
        that reaches the stream's end arms its wake flag."""
        try:
            base = self.tail[partition]
            read = await self._read(partition, base, "+", PAGE, tail=True)
        except StorageError as error:
            log.warning("events tail of partition %d: cluster unavailable: %r", partition, error)
            await asyncio.sleep(RETRY_S)
            return True
        verdict, events = read.verdict, read.events
        if verdict == "changed":
            log.warning("events of partition %d: the stream lost entries already read (failover)", partition)
            # Past what no batch will carry: subscribers read up to it.
            await self._handed_out(Batch(partition, None, [], read.last))
            return False
        if verdict == "trimmed":  # it stalled and entries after its position were trimmed
            log.warning("events tail of partition %d: entries after its position were trimmed", partition)
        if events or verdict != "ok":
            # After a trim to the end, nothing after its position is left: it stands at the last entry trimmed.
            until = events[-1].anchor if events else read.last
            await self._handed_out(Batch(partition, base if verdict == "ok" else None, events, until))
        return len(events) == PAGE

    async def _handed_out(self, batch: Batch) -> None:
        """Queue the batch for _publish, and wait until it is recorded and handed out."""
        done = asyncio.get_running_loop().create_future()
        self._outbox.append((batch, done))
        self._outbox_filled.set()
        await done

    async def _publish(self) -> None:
        """Record the tail reads' batches (feed_checkpoints.py), those ready together in one write, then move the
        tail and hand them out in the order recorded, each with the versions before and after it; unrecorded
        when the write failed. One write at a time, so versions and hand-outs keep one order."""
        while True:
            await self._outbox_filled.wait()
            self._outbox_filled.clear()
            ready, self._outbox = self._outbox, []
            if not ready:
                continue
            changes = [(batch.partition, batch.until) for batch, _ in ready]
            try:
                recorded = await self.checkpoints.record(self.tail, changes)
            except Exception:  # a defect: the batches still go out, unrecorded
                log.exception("change-feed checkpoints: recording failed")
                recorded = None
            self._publish_recorded(ready, recorded)

    def _publish_recorded(self, ready: list[tuple[Batch, asyncio.Future[None]]], recorded: Recorded | None) -> None:
        base = list(self.tail) if recorded is not None and recorded.new_chain else None
        if recorded is not None:
            self.tail_version = recorded.before
        for index, (batch, done) in enumerate(ready):
            self.tail[batch.partition] = batch.until
            previous = self.tail_version
            self.tail_version = Version(recorded.before.chain, recorded.first + index) if recorded else None
            starts_chain = recorded is not None and recorded.new_chain and index == 0
            self._hand_out(
                dataclasses.replace(
                    batch, previous=previous, version=self.tail_version, base=base if starts_chain else None
                )
            )
            if not done.done():
                done.set_result(None)

    def _hand_out(self, batch: Batch) -> None:
        for subscription in self.subscriptions:
            subscription.push(batch)


def _anchor_of(reply: Sequence[Any]) -> Anchor:
    return Anchor(parse_id(reply[0]), int(reply[1]), int(reply[2]))


def _events(partition: int, entries: Sequence[Any], offsets: Iterable[int]) -> list[Event]:
    """Events from a script's entries (fields as a flat list) at the given offsets."""
    events = []
    for n, (raw_id, flat) in zip(offsets, entries, strict=False):
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        events.append(
            Event(
                id=parse_id(raw_id),
                n=n,
                partition=partition,
                user=fields[b"user"].decode(),
                type=fields[b"type"].decode(),
                ts_ms=int(fields[b"ts"]),
            )
        )
    return events
