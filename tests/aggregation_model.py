"""A model-based check of the aggregator's scripts: random histories and consumer schedules on a real node.

One run writes a random history of profile events (creates, reads, updates, deletes and re-creates of
up to eight users, and the odd malformed entry) into one partition's stream while several consumers
read it in random-sized batches, stall, die with entries pending, reclaim them with XAUTOCLAIM, re-read
their own pending entries, re-apply old batches (some with repeated ids), walk recounts in small steps
and trim the stream with a retention window (forgetting tombstones), all with the project's own
apply_events.lua, recount_step.lua and trim_acknowledged.lua. Lossy failovers are simulated: every key
of the partition's slot is restored to an earlier copy (DUMP/RESTORE), as a promoted replica that lacked
the last writes would hold them (one slot rolls back to one point of the replication stream), and the
stream's next ids are sometimes the lost ones again, with other content. Consumers keep what they held.

The top list's index is in the schedule too: copies of the partition's outbox into its bucket
(index_top.lua, clear_outbox.lua), some made at once, some read and held to be written late (a stalled
copier, or one of a replica the lease moved from); failovers of the bucket's own slot, which lose its last
copies (the bucket is restored to an earlier copy, apart from the partition); and resyncs (a reindex of the
partition, reindex_partition.lua, and a sweep of the bucket, note_users.lua), which the aggregator runs
every PROFILEMESH_AGGREGATOR_REINDEX_S.

After every step the partition's state must satisfy the invariant of docs/architecture.md, computed
from the model's history and what the group says is applied (delivered and not pending): totals, each
tombstone (stats:deleted and stats:deleted-at; forgotten only once nothing older is unapplied) and each
score (the applied reads after the tombstone, less those a recount in progress has still to reach). The
index's: every note in the outbox holds its user's score as the partition holds it, and, unless a failover
came since the last resync, the bucket holds every user's score that the outbox has no note for. At the end
every entry is applied and the statistics must equal a sequential replay of the history, and after a last
resync and copy the bucket equals the scores and the outbox is empty.

`python -m tests.aggregation_model --runs 1000 --url redis://127.0.0.1:PORT` runs it against a node of
your own (it deletes its keys only); `--seed N` replays one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.commands.core import Script

from aggregator_svc.aggregator import (
    APPLY_SCRIPT,
    CLEAR_OUTBOX_SCRIPT,
    INDEX_TOP_SCRIPT,
    NOTE_USERS_SCRIPT,
    OUTBOX_NOTES_SCRIPT,
    RECOUNT_SCRIPT,
    REINDEX_SCRIPT,
    TRIM_SCRIPT,
)
from tests.helpers import FunctionCall, expected_statistics, load_functions

GROUP = "aggregator"
USERS = ("ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal")
MALFORMED: tuple[dict[str, str], ...] = (
    {"type": "read", "ts": "0"},  # no user
    {"user": "ann", "type": "bogus", "ts": "0"},  # unknown type
    {"user": "bob", "ts": "0"},  # no type
)


@dataclass(frozen=True)
class PartitionKeys:
    """A made-up partition's keys, named like the real ones (common.storage.keys) under a tag of the run's own."""

    tag: str

    @property
    def events(self) -> str:
        return f"events:{self.tag}"

    @property
    def apply_keys(self) -> list[str]:
        """What apply_events.lua takes: stream, reads, totals, tombstones, tombstones by time, recounts, the top
        list's outbox."""
        names = ("reads", "totals", "deleted", "deleted-at", "recount", "top-outbox")
        return [self.events, *(f"stats:{name}:{self.tag}" for name in names)]

    @property
    def trim_keys(self) -> list[str]:
        """What trim_acknowledged.lua takes: stream, tombstones, tombstones by time, recounts, the trim record."""
        return [self.apply_keys[0], *self.apply_keys[3:6], f"{self.events}:trimmed"]

    @property
    def outbox(self) -> str:
        return self.apply_keys[6]

    @property
    def outbox_keys(self) -> list[str]:
        """What reindex_partition.lua and note_users.lua take: reads, the outbox."""
        return [self.apply_keys[1], self.outbox]

    @property
    def index_keys(self) -> list[str]:
        """What index_top.lua takes: the partition's bucket of the index and its versions (a standalone node:
        any names do)."""
        return [f"stats:top:{self.tag}", f"stats:top-versions:{self.tag}"]

    @property
    def recount_keys(self) -> list[str]:
        """What recount_step.lua takes: stream, reads, recounts, the top list's outbox."""
        return [self.events, self.apply_keys[1], self.apply_keys[5], self.apply_keys[6]]


Pipe = redis.client.Pipeline
# What to do with a step's replies, once its pipeline ran.
Done = Callable[..., None]
# An apply function: a pipeline, the script, the partition and a batch of entry ids; it queues their apply.
Apply = Callable[[Pipe, FunctionCall, PartitionKeys, list[str]], object]
ACTIONS = (
    "read",
    "apply",
    "take",
    "reclaim",
    "own",
    "die",
    "reapply",
    "repeat",
    "trim",
    "recount",
    "save",
    "failover",
    "copy",
    "hold",
    "late",
    "save index",
    "index failover",
    "resync",
)
WEIGHTS = (6, 6, 6, 2, 1, 1, 1, 1, 1, 3, 1, 1, 4, 2, 2, 1, 1, 1)
# The partition's state in one reply (a read-only script; one command rather than seven keeps the 5,000 runs
# quick): the group's last delivered id, the pending ids, then reads, totals, tombstones, tombstones by
# time, recounts, the top list's outbox and the bucket of the index, each flat.
STATE = """
local delivered = '0-0'
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #info, 2 do
    if info[i] == 'name' and info[i + 1] ~= ARGV[1] then break end
    if info[i] == 'last-delivered-id' then delivered = info[i + 1] end
  end
end
local pending = {}
for _, row in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000)) do pending[#pending + 1] = row[1] end
return {delivered, pending, redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[3]),
  redis.call('HGETALL', KEYS[4]), redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[6]),
  redis.call('HGETALL', KEYS[7]), redis.call('ZRANGE', KEYS[8], 0, -1, 'WITHSCORES')}
"""


def pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def call(client: redis.Redis | Pipe, script: Script | FunctionCall, keys: list[str], args: list[Any]) -> Any:
    """FCALL of a function loaded at the start, or EVALSHA of the model's own script (a Script on a pipeline would
    ask SCRIPT EXISTS every round trip)."""
    if isinstance(script, FunctionCall):
        return client.execute_command(*script.command(keys, args))
    return client.evalsha(script.sha, len(keys), *keys, *args)


def apply_ids(node: Pipe, script: FunctionCall, keys: PartitionKeys, ids: list[str]) -> object:
    """How the aggregator calls apply_events.lua: the group, then the entry ids."""
    return call(node, script, keys.apply_keys, [GROUP, *ids])


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


@dataclass
class Consumer:
    name: str
    held: list[list[str]] = field(default_factory=list)  # batches read but not applied yet


@dataclass(frozen=True)
class Entry:
    id: str
    user: str | None
    kind: str  # an event type, or "malformed"
    key: tuple[int, int] = (0, 0)  # the id as numbers, to compare

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", id_key(self.id))


class Run:
    """One seeded run: the history, the consumers and every step, on the node's keys under one tag."""

    def __init__(
        self,
        node: redis.Redis,
        raw: redis.Redis,
        keys: PartitionKeys,
        scripts: Scripts,
        seed: int,
        apply: Apply,
    ) -> None:
        self.node, self.raw, self.keys, self.apply = node, raw, keys, apply
        self.apply_script, self.trim_script, self.recount_script, self.state_script = scripts.counting
        self.index_script, self.clear_script, self.reindex_script, self.note_script, self.read_script = scripts.indexing
        # Appends wait here and go with the next step's round trip (they change no statistics).
        self.pipe = node.pipeline(transaction=False)
        self.rng = random.Random(seed)
        self.users = USERS[: self.rng.randint(2, len(USERS))]
        self.entries: list[Entry] = []
        self.exists = dict.fromkeys(self.users, False)
        self.ms, self.seq = 1_000_000, 0
        self.applied_batches: list[list[str]] = []
        self.consumers = [Consumer(f"c{i}") for i in range(self.rng.randint(2, 4))]
        self.restarts = 0
        self.snapshot: tuple[dict[str, bytes | None], list[Entry], dict[str, bool], int, int] | None = None
        self.failovers = 0
        self.restored = False  # the keys were restored since the last check (not through the pipeline)
        # Outbox notes read by a copy, not written yet (user, note, ...), by the failovers there had been then.
        self.held_copies: list[tuple[int, list[str]]] = []
        self.index_snapshot: dict[str, bytes | None] | None = None
        self.resynced = True  # no failover (of the partition or of the bucket) since the last resync
        self.index_failovers = 0
        self.steps = 0
        seconds, micros = node.time()
        self.now_ms = int(seconds) * 1000 + int(micros) // 1000

    # ------------------------------------------------------------------ the history

    def append(self) -> None:
        """Queue the next event of the history: profile_svc's XADD."""
        pipe = self.pipe
        # Ids a second apart (trimming forgets tombstones at ms granularity), sometimes within one ms.
        if self.rng.random() < 0.15:
            self.seq += 1
        else:
            self.ms += self.rng.randint(1, 3) * 1000
            self.seq = 0
        entry_id = f"{self.ms}-{self.seq}"
        if self.rng.random() < 0.03:
            pipe.xadd(self.keys.events, dict(self.rng.choice(MALFORMED)), id=entry_id)
            self.entries.append(Entry(entry_id, None, "malformed"))
            return
        user = self.rng.choice(self.users)
        if not self.exists[user]:
            kind = "create"
        else:
            kind = self.rng.choices(("read", "update", "delete"), weights=(5, 1, 2))[0]
        self.exists[user] = kind != "delete"
        pipe.xadd(self.keys.events, {"user": user, "type": kind, "ts": str(self.ms)}, id=entry_id)
        self.entries.append(Entry(entry_id, user, kind))

    # ------------------------------------------------------------------ the consumers' steps
    # Each step queues its commands on the pipeline and returns what to do with their replies: the state
    # the invariant is checked against is read in the same round trip, after them.

    def _read(self, pipe: Pipe, consumer: Consumer, start: str) -> Done:
        pipe.xreadgroup(GROUP, consumer.name, {self.keys.events: start}, count=self.rng.randint(1, 6))

        def done(reply: Any) -> None:
            ids = [entry_id for _, entries in reply or () for entry_id, _ in entries]
            if ids:
                consumer.held.append(ids)

        return done

    def _reclaim(self, pipe: Pipe, consumer: Consumer) -> Done:
        start = self.rng.choice(["0-0", f"{max(1_000_000, self.ms - self.rng.randint(0, 40_000))}-0"])
        pipe.xautoclaim(
            self.keys.events, GROUP, consumer.name, min_idle_time=0, start_id=start, count=self.rng.randint(1, 8)
        )

        def done(reply: Any) -> None:
            ids = [entry_id for entry_id, _ in reply[1]]
            if ids:
                consumer.held.append(ids)

        return done

    def _take(self, pipe: Pipe, consumer: Consumer) -> None:
        """The aggregator's hot path: the script takes the next entries for the consumer and applies them."""
        count = self.rng.randint(1, 6)
        call(pipe, self.apply_script, self.keys.apply_keys, [GROUP, ">", consumer.name, count])

    def _apply_held(self, pipe: Pipe, consumer: Consumer, repeat: bool = False) -> None:
        batch = consumer.held.pop(self.rng.randrange(len(consumer.held)))  # not always the oldest: a stall
        sent = list(batch)
        if repeat:  # the same id more than once in one batch
            for _ in range(self.rng.randint(1, 3)):
                sent.insert(self.rng.randint(0, len(sent)), self.rng.choice(batch))
        self.apply(pipe, self.apply_script, self.keys, sent)
        self.applied_batches.append(batch)

    def _trim(self, pipe: Pipe) -> None:
        """The maintenance run, with a retention window: none, everything, or one that cuts into the history
        (the node's clock is far past the history's ids, so the window is measured back from now)."""
        choice = self.rng.random()
        if choice < 0.4 or not self.entries:
            retention_ms = 0
        elif choice < 0.6:
            retention_ms = 10**13
        else:
            retention_ms = self.now_ms - (id_key(self.rng.choice(self.entries).id)[0] + 500)
        call(pipe, self.trim_script, self.keys.trim_keys, [GROUP, 600_000, retention_ms])

    def _recount(self, pipe: Pipe) -> None:
        call(pipe, self.recount_script, self.keys.recount_keys, [GROUP, self.rng.randint(1, 4)])

    # ------------------------------------------------------------------ the top list's index

    def _read_outbox(self) -> list[str]:
        """A copy's read of the outbox (outbox_notes.lua), page by page: its notes, without its own fields."""
        self.pipe.execute()  # the appends queued so far come first
        notes: list[str] = []
        cursor = "0"
        while True:
            cursor, page = call(self.node, self.read_script, [self.keys.outbox], [cursor, 2])
            notes += page
            if cursor == "0":
                return notes

    def _write_copy(self, pipe: Pipe, notes: list[str]) -> None:
        call(pipe, self.index_script, self.keys.index_keys, notes)
        call(pipe, self.clear_script, [self.keys.outbox], notes)

    def _resync(self, pipe: Pipe) -> None:
        """The aggregator's periodic reindex of the partition and sweep of the bucket, then a copy."""
        self.pipe.execute()
        cursor = "0"
        while True:
            cursor, _ = call(self.node, self.reindex_script, self.keys.outbox_keys, [cursor, 2])
            if cursor == "0":
                break
        bucket = self.node.zrange(self.keys.index_keys[0], 0, -1)
        if bucket:
            call(self.node, self.note_script, self.keys.outbox_keys, bucket)
        self._write_copy(pipe, self._read_outbox())
        self.resynced = True
        # A copy read before a failover is not written after the resync that follows it: the aggregator's copies
        # give up within seconds (COPY_DEADLINE_S), its resyncs come every PROFILEMESH_AGGREGATOR_REINDEX_S. Such a
        # copy could bring back a score the failover took from the partition and the bucket alike (its version
        # lost with the bucket's), until the next resync.
        self.held_copies = [(epoch, notes) for epoch, notes in self.held_copies if epoch == self._failovers()]

    def _failovers(self) -> int:
        return self.failovers + self.index_failovers

    def _save_index(self) -> None:
        with self.raw.pipeline(transaction=False) as raw:
            for key in self.keys.index_keys:
                raw.dump(key)
            self.index_snapshot = dict(zip(self.keys.index_keys, raw.execute(), strict=True))

    def _fail_over_index(self) -> None:
        """The bucket's own slot fails over: its copies since the snapshot are lost, the partition keeps all."""
        assert self.index_snapshot is not None
        self._restore(self.index_snapshot)
        self.resynced = False
        self.index_failovers += 1

    # ------------------------------------------------------------------ lossy failovers

    def _restore(self, dumps: dict[str, bytes | None]) -> None:
        with self.raw.pipeline(transaction=False) as raw:
            for key, data in dumps.items():
                if data is None:
                    raw.delete(key)
                else:
                    raw.restore(key, 0, data, replace=True)
            raw.execute()
        self.restored = True

    def _save(self) -> None:
        """What a replica holds now: every key of the slot at one point, and the model's history then."""
        self.pipe.execute()  # the appends queued so far come first
        with self.raw.pipeline(transaction=False) as raw:
            for key in self.keys.apply_keys:
                raw.dump(key)
            dumps = raw.execute()
        self.snapshot = (
            dict(zip(self.keys.apply_keys, dumps, strict=True)),
            list(self.entries),
            dict(self.exists),
            self.ms,
            self.seq,
        )

    def _fail_over(self) -> None:
        """The replica is promoted: every later write to the slot is lost; the consumers keep what they held."""
        assert self.snapshot is not None
        self.pipe.execute()  # the appends queued so far come first
        dumps, entries, exists, ms, seq = self.snapshot
        self._restore(dumps)
        self.entries, self.exists = list(entries), dict(exists)
        self.resynced = False
        if self.rng.random() < 0.5:  # the new primary's clock is behind the lost tail: lost ids come again
            self.ms, self.seq = ms, seq
        self.failovers += 1

    # ------------------------------------------------------------------ the schedule

    def step(self, pipe: Pipe) -> Done | None:
        """Queue one random step on the pipeline; returns what to do with its replies."""
        self.steps += 1
        consumer = self.rng.choice(self.consumers)
        action = self.rng.choices(ACTIONS, weights=WEIGHTS)[0]
        if action == "read":
            return self._read(pipe, consumer, ">")
        if action == "take":
            self._take(pipe, consumer)
        elif action in ("apply", "repeat") and consumer.held:
            self._apply_held(pipe, consumer, repeat=action == "repeat")
        elif action == "reclaim":
            return self._reclaim(pipe, consumer)
        elif action == "own":  # a consumer taking back its own pending entries, as after a lost reply
            return self._read(pipe, consumer, "0")
        elif action == "die":  # what it held stays pending; it comes back under a new name
            self.restarts += 1
            self.consumers[self.consumers.index(consumer)] = Consumer(f"c{len(self.consumers)}r{self.restarts}")
        elif action == "reapply" and self.applied_batches:  # a retry of a batch whose reply was lost
            self.apply(pipe, self.apply_script, self.keys, self.rng.choice(self.applied_batches))
        elif action == "trim":
            self._trim(pipe)
        elif action == "recount":
            self._recount(pipe)
        elif action == "save":
            self._save()
        elif action == "failover" and self.snapshot is not None:
            self._fail_over()
        elif action == "copy":
            self._write_copy(pipe, self._read_outbox())
        elif action == "hold":
            self.held_copies.append((self._failovers(), self._read_outbox()))
        elif action == "late" and self.held_copies:
            self._write_copy(pipe, self.held_copies.pop(self.rng.randrange(len(self.held_copies)))[1])
        elif action == "save index":
            self._save_index()
        elif action == "index failover" and self.index_snapshot is not None:
            self._fail_over_index()
        elif action == "resync":
            self._resync(pipe)
        return None

    def _run(self, queue: Callable[[Pipe], Done | None], force: bool = False) -> list[Any] | None:
        """One round trip: the queued appends, what `queue` queues, then the state; handles the replies and
        returns the state (None, and no round trip, when there was nothing to send)."""
        pipe = self.pipe
        first = len(pipe.command_stack)
        done = queue(pipe)
        last = len(pipe.command_stack)
        if last == 0 and not (force or self.restored):
            return None
        self.restored = False
        call(pipe, self.state_script, [*self.keys.apply_keys, self.keys.index_keys[0]], [GROUP])
        replies = pipe.execute()
        if done is not None:
            done(*replies[first:last])
        state: list[Any] = replies[-1]
        return state

    def drain(self) -> None:
        """What a healthy replica ends up doing: apply whatever is held, reclaim and read until nothing is left,
        walk the recounts to their end and trim until every tombstone due is forgotten."""
        self.pipe.execute()
        last = Consumer("drain")
        for consumer in self.consumers:
            while consumer.held:
                self._run(lambda pipe, c=consumer: self._apply_held(pipe, c))  # type: ignore[misc]
        while self.rng.random() < 0.5:
            taken = call(self.node, self.apply_script, self.keys.apply_keys, [GROUP, ">", last.name, 6])
            if not int(taken[2]):
                break
        for _ in range(1000):
            _, entries, *_ = self.node.xautoclaim(
                self.keys.events, GROUP, last.name, min_idle_time=0, start_id="0-0", count=100
            )
            ids = [entry_id for entry_id, _ in entries]
            reply = self.node.xreadgroup(GROUP, last.name, {self.keys.events: ">"}, count=100)
            ids += [entry_id for _, got in reply or () for entry_id, _ in got]
            if not ids:
                break
            with self.node.pipeline(transaction=False) as pipe:
                self.apply(pipe, self.apply_script, self.keys, ids)
                pipe.execute()
        else:
            raise AssertionError("the drain did not finish")
        for _ in range(10_000):
            _, more, _ = call(self.node, self.recount_script, self.keys.recount_keys, [GROUP, 4])
            if not int(more):
                break
        for _ in range(100):
            _, more = call(self.node, self.trim_script, self.keys.trim_keys, [GROUP, 600_000, 0])
            if not int(more):
                break
        # Every held copy is written at last (or fails its version check), then a resync.
        for _, notes in self.held_copies:
            self._run(lambda pipe, n=notes: self._write_copy(pipe, n))  # type: ignore[misc]
        self.held_copies.clear()
        self._run(self._resync)

    # ------------------------------------------------------------------ the invariant

    def check(self, state: list[Any]) -> str | None:
        """What is wrong with the partition's state (read by STATE) by the invariant; None when nothing is."""
        delivered = id_key(state[0])
        pending = set(state[1])
        scores, totals, deleted, deleted_at, recount, outbox, index = (pairs(flat) for flat in state[2:])
        applied = [e for e in self.entries if e.key <= delivered and e.id not in pending]
        problems = []

        want_totals: dict[str, int] = {}
        latest: dict[str, Entry] = {}
        for e in applied:
            if e.user is None:
                continue
            want_totals[e.kind] = want_totals.get(e.kind, 0) + 1
            if e.kind == "delete" and (e.user not in latest or latest[e.user].key < e.key):
                latest[e.user] = e
        tombstones = {user: e.id for user, e in latest.items()}
        if {kind: int(n) for kind, n in totals.items()} != want_totals:
            problems.append(f"totals {totals}, expected {want_totals}")

        # A tombstone may be forgotten once every entry up to its ms is applied (trimming works in ms).
        oldest_unapplied = min((e.key for e in self.entries if e.key > delivered or e.id in pending), default=None)
        for user in set(tombstones) | set(deleted):
            want, got = tombstones.get(user), deleted.get(user)
            forgettable = want is not None and (oldest_unapplied is None or id_key(want)[0] < oldest_unapplied[0])
            if got != want and not (got is None and forgettable):
                problems.append(f"tombstone of {user}: {got}, expected {want}")
        at = {user: int(score) for user, score in deleted_at.items()}
        want_at = {user: id_key(entry_id)[0] for user, entry_id in deleted.items()}
        if at != want_at:
            problems.append(f"tombstones by time {at}, expected {want_at}")

        jobs = {}
        for name, value in recount.items():
            if name.startswith("user:"):
                number, since = value.split(" ")
                job = recount.get(f"job:{number}")
                if job is None:
                    problems.append(f"{name} belongs to job {number}, which is gone")
                    continue
                if since != tombstones.get(name[5:]):  # the tombstone itself may be forgotten meanwhile
                    problems.append(f"{name} recounts since {since}, tombstone {tombstones.get(name[5:])}")
                cursor, last = job.split(" ")
                jobs[name[5:]] = (id_key(cursor), id_key(last))
        want_scores: dict[str, int] = {}
        for e in applied:
            if e.kind != "read" or e.user is None:
                continue
            since = latest.get(e.user)
            if since is not None and e.key <= since.key:
                continue
            job = jobs.get(e.user)
            if job is not None and job[0] < e.key <= job[1]:
                continue  # its recount has still to reach it
            want_scores[e.user] = want_scores.get(e.user, 0) + 1
        if {user: int(score) for user, score in scores.items()} != want_scores:
            problems.append(f"scores {scores}, expected {want_scores}")

        # The index: a note holds the score as the partition holds it now; a user without a note is in the bucket
        # as in the partition, unless a failover since the last resync lost what it holds there.
        for user, note in outbox.items():
            if user.startswith("#"):
                continue
            noted = note.split(" ")[1]
            if noted != scores.get(user, "-"):
                problems.append(f"the outbox notes {user} at {note}, the partition holds {scores.get(user)}")
        if self.resynced:
            for user in set(scores) | set(index):
                if user not in outbox and index.get(user) != scores.get(user):
                    problems.append(f"the index holds {user} at {index.get(user)}, the partition {scores.get(user)}")
        return "; ".join(problems) or None

    def play(self, check_every_step: bool = True) -> str | None:
        """The whole run; returns what is wrong (and when), or None."""
        self.node.delete(*self.keys.apply_keys, *self.keys.index_keys)
        self.node.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
        events = self.rng.randint(4, 44)
        appended = 0
        tail = self.rng.randint(0, 12)
        while appended < events or tail > 0:
            if appended < events and self.rng.random() < 0.35:
                self.append()
                appended += 1
                continue
            tail -= appended >= events
            state = self._run(self.step)
            if state is None:  # the step sent nothing: nothing changed
                continue
            if check_every_step and (problem := self.check(state)):
                return f"after step {self.steps + appended}: {problem}"
        self.drain()
        if problem := self.check(self._run(lambda pipe: None, force=True)):  # type: ignore[arg-type]
            return f"after the drain: {problem}"
        history = [(e.user or "", e.kind) for e in self.entries if e.user is not None]
        scores, totals = expected_statistics(history)
        expected_scores = {user: float(n) for user, n in scores.items()}
        expected_totals = {kind: str(n) for kind, n in totals.items()}
        _, reads, totals_key, deleted_key, _, recount_key, outbox_key = self.keys.apply_keys
        got_scores = dict(self.node.zrange(reads, 0, -1, withscores=True))
        got_totals = self.node.hgetall(totals_key)
        pending = self.node.xpending(self.keys.events, GROUP)["pending"]
        recounts = self.node.hgetall(recount_key)
        if got_scores != expected_scores or got_totals != expected_totals or pending or recounts:
            return (
                f"history {history}: scores {got_scores} (expected {expected_scores}), "
                f"totals {got_totals} (expected {expected_totals}), {pending} pending, recounts left {recounts}"
            )
        index = dict(self.node.zrange(self.keys.index_keys[0], 0, -1, withscores=True))
        left = [user for user in self.node.hkeys(outbox_key) if not user.startswith("#")]
        if index != got_scores or left:
            return f"after the last resync: the index holds {index}, the scores are {got_scores}; notes left {left}"
        # Every tombstone left is its user's latest delete.
        latest = {e.user: e.id for e in self.entries if e.kind == "delete"}
        for user, entry_id in self.node.hgetall(deleted_key).items():
            if latest.get(user) != entry_id:
                return f"tombstone of {user} after the drain: {entry_id}, expected {latest.get(user)}"
        return None


def run_many(url: str, seeds: Sequence[int], tag: str = "{model}", apply: Apply = apply_ids) -> dict[int, str]:
    """Every seed's run on the node at `url`, on keys under `tag`; returns the wrong ones by seed."""
    keys = PartitionKeys(tag)
    with (
        redis.Redis.from_url(url, decode_responses=True) as node,
        redis.Redis.from_url(url) as raw,
    ):
        scripts = load_scripts(node)
        wrong = {}
        for seed in seeds:
            problem = Run(node, raw, keys, scripts, seed, apply).play()
            if problem:
                wrong[seed] = problem
        node.delete(*keys.apply_keys, *keys.index_keys)
    return wrong


@dataclass(frozen=True)
class Scripts:
    counting: tuple[FunctionCall, FunctionCall, FunctionCall, Script]  # apply, trim, recount, the model's state
    indexing: tuple[FunctionCall, FunctionCall, FunctionCall, FunctionCall, FunctionCall]  # index, clear, reindex,
    # note users, read the outbox


def load_scripts(node: redis.Redis) -> Scripts:
    """The apply, trim and recount functions and the index's (every library loaded on the node, as the admin
    step does), and the model's own state reader (a script of the test's, on the test's own node)."""
    load_functions(node)
    state = node.register_script(STATE)
    node.script_load(state.script)
    index, clear, reindex, note, read = (
        FunctionCall(path)
        for path in (INDEX_TOP_SCRIPT, CLEAR_OUTBOX_SCRIPT, REINDEX_SCRIPT, NOTE_USERS_SCRIPT, OUTBOX_NOTES_SCRIPT)
    )
    return Scripts(
        (FunctionCall(APPLY_SCRIPT), FunctionCall(TRIM_SCRIPT), FunctionCall(RECOUNT_SCRIPT), state),
        (index, clear, reindex, note, read),
    )


def run_parallel(url: str, seeds: Sequence[int], workers: int = 2) -> dict[int, str]:
    """The runs spread over processes (the client side is the slow part), each on a tag of its own."""
    shares = [seeds[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.map(run_many, [url] * workers, shares, [f"{{model{i}}}" for i in range(workers)])
        return {seed: problem for result in results for seed, problem in result.items()}


def stats(url: str, seeds: Sequence[int]) -> dict[str, Any]:
    """What the runs exercised, to see that the schedule reaches what it should (used by --stats)."""
    keys = PartitionKeys("{model-stats}")
    totals = {"runs": 0, "events": 0, "failovers": 0, "steps": 0}
    with redis.Redis.from_url(url, decode_responses=True) as node, redis.Redis.from_url(url) as raw:
        scripts = load_scripts(node)
        for seed in seeds:
            run = Run(node, raw, keys, scripts, seed, apply_ids)
            run.play(check_every_step=False)
            totals["runs"] += 1
            totals["events"] += len(run.entries)
            totals["failovers"] += run.failovers
            totals["steps"] += run.steps
        node.delete(*keys.apply_keys, *keys.index_keys)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a standalone (non-cluster) node to use")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, help="replay this run only")
    parser.add_argument("--stats", action="store_true", help="say what the runs exercised instead")
    options = parser.parse_args()
    seeds = [options.seed] if options.seed is not None else list(range(options.runs))
    if options.stats:
        print(stats(options.url, seeds))
        return
    wrong = run_parallel(options.url, seeds) if len(seeds) > 1 else run_many(options.url, seeds)
    for seed, problem in list(wrong.items())[:5]:
        print(f"seed {seed}: {problem}")
    print(f"{len(wrong)} wrong of {len(seeds)} runs")


if __name__ == "__main__":
    main()
