"""The aggregator's loop: read each partition's stream through the consumer group, apply, acknowledge.

The replicas share the partitions (share.py); when two consume one (a handover) the consumer group hands
each entry to one of them, and the apply script (see scripts/apply_events.lua) makes the count exact even
when a slow replica and one that reclaimed its entries both try to apply them, in any order.

An idle partition waits for a wake-up by sharded pub/sub (one subscription per primary,
common/storage/wakes.py), which the script appending its next event sends. What a partition costs while
nothing happens stays flat as partitions grow: the partitions with recent events are reclaimed, trimmed
and recounted every maintenance interval, the quiet ones a slice at a time; the scripts of one instant
share a pipeline per primary, and one partition on a shard that is down fails alone.

The aggregator also keeps the top list's index (docs/architecture.md, "The top list's index"): it copies each
partition's outbox, which the scripts that count fill, into the partition's bucket, and reindexes and sweeps to
repair what a failover lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aggregator_svc.share import Share
from common.errors import ClusterUnavailable, NoGroup, StorageError
from common.runtime import metrics
from common.runtime.config import AggregatorSettings
from common.storage import keys
from common.storage.cluster import Cluster, Confirm
from common.storage.replies import text

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).parent / "scripts"
APPLY_SCRIPT = SCRIPTS / "apply_events.lua"
TRIM_SCRIPT = SCRIPTS / "trim_acknowledged.lua"
RECOUNT_SCRIPT = SCRIPTS / "recount_step.lua"
INDEX_TOP_SCRIPT = SCRIPTS / "index_top.lua"
CLEAR_OUTBOX_SCRIPT = SCRIPTS / "clear_outbox.lua"
REINDEX_SCRIPT = SCRIPTS / "reindex_partition.lua"
NOTE_USERS_SCRIPT = SCRIPTS / "note_users.lua"
OUTBOX_NOTES_SCRIPT = SCRIPTS / "outbox_notes.lua"
# Entries one recount step reads: keeps each step's script well under 50 ms (tests/test_script_time.py).
RECOUNT_STEP = 500
RETRY_S = 0.5  # a partition's first retry after its cluster calls failed; each next one waits twice as long,
MAX_RETRY_S = 2.0  # up to this: a shard that is down holds a third of 4,096 partitions, each retrying
TAKE_DEADLINE_S = 2.0  # a take's script and its retries (a take applies what it takes: ending it early is safe)
# A quiet partition is looked after (reclaimed, trimmed, recounted) on one quiet check in this many; the others
# only take it, for a wake-up that was lost. Its entries were trimmed while it had recent events; what is left
# to do there is another replica's (a consumer of one that died, a recount half done before the partition fell
# to this one) or an older version's (entries read apart from applying them, left pending).
QUIET_LOOK_AFTER_EVERY = 10
QUIET_LOOKING = 16  # quiet partitions looked after at once (_maintenance)
# The top list's index: an outbox is copied this long after the first apply that noted something, so that the
# copies of many applies, and of many partitions (one pipeline per primary), are made together.
COPY_LINGER_S = 0.1
COPIES_AT_ONCE = 32  # partitions copied at once: the rest wait for a place, not for a deadline
COPY_DEADLINE_S = 2.0  # one call of a copy, its retries included; a copy that fails is made again
INDEX_STEP = 500  # users one step of a reindex or a sweep notes: keeps each step's script short
# Consumers with nothing pending and idle this long (a crashed or retired replica) are removed.
FORGET_CONSUMER_AFTER_MS = 10 * 60 * 1000

Entry = tuple[bytes, dict[bytes, bytes]]


def apply_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys apply_events.lua takes, in its order."""
    return [
        keys.events_key(partition, generation),
        keys.reads_key(partition, generation),
        keys.totals_key(partition, generation),
        keys.deleted_key(partition, generation),
        keys.deleted_at_key(partition, generation),
        keys.recount_key(partition, generation),
        keys.top_outbox_key(partition, generation),
    ]


def take_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys apply_events.lua takes with '>': apply_keys and the partition's wake flag, which it sets when
    it finds nothing."""
    return [*apply_keys(partition, generation), keys.wake_key(partition, generation)]


def trim_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys trim_acknowledged.lua takes, in its order."""
    return [
        keys.events_key(partition, generation),
        keys.deleted_key(partition, generation),
        keys.deleted_at_key(partition, generation),
        keys.recount_key(partition, generation),
        keys.trimmed_key(partition, generation),
    ]


def recount_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys recount_step.lua takes, in its order."""
    return [
        keys.events_key(partition, generation),
        keys.reads_key(partition, generation),
        keys.recount_key(partition, generation),
        keys.top_outbox_key(partition, generation),
    ]


def outbox_keys(partition: int, generation: int = 0) -> list[str]:
    """The keys reindex_partition.lua and note_users.lua take: the partition's reads and its outbox."""
    return [keys.reads_key(partition, generation), keys.top_outbox_key(partition, generation)]


def _settle(waiter: asyncio.Future[bool], woken: bool) -> None:
    if not waiter.done():
        waiter.set_result(woken)


class Aggregator:
    def __init__(self, cluster: Cluster, settings: AggregatorSettings) -> None:
        self.cluster = cluster
        self.group = settings.group
        self.consumer = settings.consumer
        self.batch = settings.batch
        self.claim_idle_ms = settings.claim_idle_ms
        self.maintenance_s = settings.maintenance_s
        # The quiet partitions are looked after in this many slices, one per maintenance interval.
        self.slices = max(1, settings.quiet_check_s // settings.maintenance_s)
        self.retention_ms = settings.retention_s * 1000
        self.linger_s = settings.linger_ms / 1000
        self.partitions = range(settings.partitions)
        # Each is a no-op for what a first run did: a connection lost under one is a reason to run it again.
        self._apply = cluster.script(APPLY_SCRIPT, repeatable=True)
        self._trim = cluster.script(TRIM_SCRIPT, repeatable=True)
        self._recount_step = cluster.script(RECOUNT_SCRIPT, repeatable=True)
        self._index_top = cluster.script(INDEX_TOP_SCRIPT, repeatable=True)  # versions make a repeat a no-op
        self._clear_outbox = cluster.script(CLEAR_OUTBOX_SCRIPT, repeatable=True)
        self._reindex_step = cluster.script(REINDEX_SCRIPT, repeatable=True)
        self._note_users = cluster.script(NOTE_USERS_SCRIPT, repeatable=True)
        self._outbox_notes = cluster.script(OUTBOX_NOTES_SCRIPT, repeatable=True)
        self.share = Share(cluster, settings.consumer, self.partitions, settings.claim_idle_ms, self._wake_up)
        # Set when an apply queued a recount on the partition, so its recount loop starts at once.
        self._recount_due = {partition: asyncio.Event() for partition in self.partitions}
        # An idle partition's wake-up (its next event, or its subscription made anew): the future its consume loop
        # awaits, or True when the wake-up came while no loop waited.
        self._wake: dict[int, asyncio.Future[bool] | bool] = dict.fromkeys(self.partitions, False)
        self.generation = 0  # the layout's, read by run() before anything touches a key
        # Until when (monotonic) a partition counts as having recent events: its entries are still to be trimmed.
        self._active_until = dict.fromkeys(self.partitions, 0.0)
        self._active_s = settings.retention_s + 2 * settings.maintenance_s
        # A partition's failed cluster calls in a row (its loop's, or a look-after's): while any, its maintenance,
        # which would fail too, is left out; its loop's next call that works clears them.
        self._failures = dict.fromkeys(self.partitions, 0)
        # The top list's index. Partitions whose users were never all noted in their outbox: their loop does that
        # before its next take. Partitions due for a copy of their outbox (the task that makes it), and those noted
        # again while it ran, copied once more after it.
        self._unindexed: set[int] = set()
        self._copying: dict[int, asyncio.Task[None]] = {}
        self._copy_again: set[int] = set()
        self._copy_places = asyncio.Semaphore(COPIES_AT_ONCE)
        self._copy_defect: BaseException | None = None
        self.reindex_s = settings.reindex_s
        # When each partition's users (and for the first top_buckets partitions, its bucket's) are noted again.
        self._reindex_due = dict.fromkeys(self.partitions, time.monotonic() + self.reindex_s)

    async def run(self) -> None:
        """Consume every partition until cancelled; an unexpected failure of one loop ends them all (a task
        group, unlike gather, cancels the others), so the process shuts down rather than half-running."""
        await self.cluster.layout_checked()  # every key name needs the layout's generation
        self.generation = self.cluster.generation
        try:
            async with asyncio.TaskGroup() as loops:
                loops.create_task(self._watch_wakes())
                loops.create_task(self._maintenance())
                loops.create_task(self.share.run())
                for partition in self.partitions:
                    loops.create_task(self._consume(partition))
                    loops.create_task(self._recounts(partition))
        finally:
            copies = list(self._copying.values())
            for task in copies:
                task.cancel()
            await asyncio.gather(*copies, return_exceptions=True)

    async def _watch_wakes(self) -> None:
        await self.cluster.watch_wakes(self.partitions, self._wake_up)

    def _wake_up(self, partition: int) -> None:
        waiter = self._wake[partition]
        if isinstance(waiter, asyncio.Future):
            _settle(waiter, True)
        else:
            self._wake[partition] = True

    def _until_quiet_check(self, partition: int) -> float:
        """Seconds to the partition's next quiet check: the next maintenance instant of its slice."""
        now = time.monotonic()
        tick = int(now // self.maintenance_s) + 1
        tick += (partition - tick) % self.slices
        return tick * self.maintenance_s - now

    async def _woken_before_idle_check(self, partition: int) -> bool:
        """Wait for the partition's wake-up: True when it came, False when its quiet check came due first (the
        partitions of a slice together, so that their takes share pipelines): a wake-up lost with a
        connection, or never sent (a profile_svc older than the wake flags), costs that much lag at most.
        A plain future, not asyncio.wait_for, which can swallow a cancellation on 3.11."""
        if self._wake[partition] is True:
            self._wake[partition] = False
            return True
        loop = asyncio.get_running_loop()
        waiter = self._wake[partition] = loop.create_future()
        due = loop.call_later(self._until_quiet_check(partition), _settle, waiter, False)
        try:
            return bool(await waiter)
        finally:
            due.cancel()
            self._wake[partition] = False

    async def _ensure_group(self, partition: int) -> None:
        """Create the group from the stream's first entry, so events written before any aggregator ran count."""
        await self.cluster.create_group(keys.events_key(partition, self.generation), self.group)

    async def _consume(self, partition: int) -> None:
        stream = keys.events_key(partition, self.generation)
        group_ready = False
        own_pending = True  # whether to look for entries delivered to us but never applied
        while True:
            try:
                if not group_ready:
                    await self._ensure_group(partition)
                    group_ready = True
                if own_pending:
                    # Entries delivered to us but never applied (a replica of an older version read them
                    # apart from applying them, or died between): take them back first, at the start and
                    # after every error, rather than waiting for them to be reclaimed as idle. A take applies
                    # and acknowledges in one script, so none are left pending by this version.
                    async with _deadline(TAKE_DEADLINE_S, f"the read of partition {partition}'s own pending entries"):
                        entries = await self.cluster.read_own_pending(stream, self.group, self.consumer, self.batch)
                    self._working(partition)
                    if entries:
                        await self._apply_entries(partition, entries)
                    own_pending = len(entries) == self.batch
                    continue
                if partition not in self.share.owned:  # another replica's: wait until it may be ours
                    await self._woken_before_idle_check(partition)
                    continue
                if partition in self._unindexed:  # a take said so: note every user, then take again
                    await self._reindex(partition)
                    continue
                taken = await self._take(partition)
                self._working(partition)
                if partition in self._unindexed:  # at once, not after a wake-up: the top list lacks its users
                    continue
                # Idle (the take armed the partition's wake flag): wait for the next event's wake-up. None by
                # the idle check: take again, which also finds a stream flushed or failed over in the meantime.
                if not taken and not await self._woken_before_idle_check(partition):
                    continue
                if taken < self.batch and self.linger_s:
                    # A trickle: let the next batch gather for a moment rather than paying a script per
                    # event. Bounds the added lag; an idle partition waits above instead. Every partition
                    # wakes on the same tick, so the event loop wakes once for all of them.
                    await asyncio.sleep(self.linger_s - time.monotonic() % self.linger_s)
            except NoGroup:  # the stream was deleted (e.g. a flushed cluster)
                own_pending = True
                group_ready = False
            except StorageError as error:
                own_pending = True
                self._failures[partition] += 1
                if self._failures[partition] == 1:  # once per outage: a shard down is thousands of partitions
                    log.warning("partition %d: cluster unavailable: %r", partition, error)
                await asyncio.sleep(min(MAX_RETRY_S, RETRY_S * 2 ** (self._failures[partition] - 1)))

    def _working(self, partition: int) -> None:
        """A call of the partition's worked. After failures, it is looked after at the next instants, as one with
        recent events is: its maintenance was left out while they failed, and a quiet partition's turn may be
        a whole round of quiet checks away (at 4,096 partitions, 20 s with the suite's settings)."""
        if self._failures[partition]:
            self._failures[partition] = 0
            self._active_until[partition] = max(self._active_until[partition], time.monotonic() + self._active_s)

    async def _take(self, partition: int) -> int:
        """Take the group's next entries for us, apply and acknowledge them: one script, their content stays in
        the cluster. Returns how many were taken; when none, the script armed the partition's wake flag. The
        partitions that take on the same tick send their takes together, one pipeline per primary. Within a
        deadline: the script runner retries a shard that is down for as long as it is given, and the loop's own
        backoff must take over (at 4,096 partitions, a third of them retrying every 0.2 s took a whole core)."""
        async with _deadline(TAKE_DEADLINE_S, f"the take of partition {partition}"):
            applied, gone, taken, _, malformed, queued, noted = await self.cluster.run(
                self._apply,
                take_keys(partition, self.generation),
                [self.group, ">", self.consumer, self.batch],
                bounded=False,
                together=True,
            )
        self._noted(partition, int(noted))
        if taken:
            self._active_until[partition] = time.monotonic() + self._active_s
            self._count(partition, int(applied), int(gone), malformed, int(queued))
        return int(taken)

    async def _apply_entries(self, partition: int, entries: list[Entry]) -> int:
        """Apply and acknowledge entries by id; the script reads their content from the stream itself."""
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        applied, gone, malformed, queued, noted = await self.cluster.run(
            self._apply, apply_keys(partition, self.generation), [self.group, *ids]
        )
        self._noted(partition, int(noted))
        self._count(partition, int(applied), int(gone), malformed, int(queued))
        return int(applied)

    def _count(self, partition: int, applied: int, gone: int, malformed: list[Any], queued: int) -> None:
        """Export a batch's figures; say when pending entries were trimmed before anyone applied them, or
        were malformed (acknowledged and skipped: they can never become valid, and left pending they would
        be reclaimed for ever and hold back trimming)."""
        if queued:
            self._recount_due[partition].set()
        if malformed:
            shown = ", ".join(text(entry_id) for entry_id in malformed[:5])
            log.error(
                "partition %d: %d malformed entries (no user, or an unknown type) acknowledged without counting: %s%s",
                partition,
                len(malformed),
                shown,
                ", ..." if len(malformed) > 5 else "",
            )
            metrics.EVENTS_MALFORMED.inc(len(malformed))
        if gone:
            log.warning(
                "partition %d: %d pending entries were no longer in the stream (trimmed); "
                "acknowledged without counting",
                partition,
                gone,
            )
        metrics.BATCHES.inc()
        metrics.EVENTS_APPLIED.inc(applied)

    async def _reclaim(self, partition: int) -> None:
        """Take over entries another consumer left pending too long (it crashed or stalled)."""
        stream = keys.events_key(partition, self.generation)
        start: Any = "0-0"
        while True:
            start, entries = await self.cluster.claim_idle(
                stream, self.group, self.consumer, self.claim_idle_ms, start, self.batch
            )
            if entries:
                metrics.RECLAIMED.inc(len(entries))
                applied = await self._apply_entries(partition, entries)
                log.info("partition %d: reclaimed %d entries, applied %d", partition, len(entries), applied)
            if start in (b"0-0", "0-0"):
                break

    async def _maintenance(self) -> None:
        """Every maintenance interval: look after the partitions due, those with recent events all at once (their
        scripts share a pipeline per primary), the quiet ones queued and QUIET_LOOKING at a time (a round of
        quiet checks at 4,096 partitions is hundreds, thousands with the suite's settings, and the busy partitions'
        look-afters must not wait behind them for places within the concurrency bound). An instant does not wait
        for the last one's stragglers: a partition on a shard that is down waits out its timeouts, and the
        others' maintenance must not wait with it (at 4,096 partitions a third of them can be there). A partition
        still being looked after sits the instant out."""
        looking: dict[int, asyncio.Task[None]] = {}
        quiet_queue: dict[int, None] = {}  # in order, each once
        looking_quiet: set[int] = set()  # those of `looking` started from the queue
        failed: list[BaseException] = []

        def start(partition: int) -> None:
            looking[partition] = task = asyncio.create_task(self._look_after(partition))
            task.add_done_callback(functools.partial(done, partition))

        def done(partition: int, task: asyncio.Task[None]) -> None:
            del looking[partition]
            looking_quiet.discard(partition)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failed.append(error)
            start_quiet()

        def start_quiet() -> None:
            while quiet_queue and len(looking_quiet) < QUIET_LOOKING:
                partition = next(iter(quiet_queue))
                del quiet_queue[partition]
                if partition not in looking:
                    looking_quiet.add(partition)
                    start(partition)

        try:
            while True:
                await asyncio.sleep(self.maintenance_s - time.monotonic() % self.maintenance_s)
                if failed:  # a defect, not the cluster's failure (_look_after outlives those): end every loop
                    raise failed[0]
                if self._copy_defect is not None:
                    raise self._copy_defect
                active, quiet = self._due(time.monotonic())
                for partition in active:
                    if partition not in looking:
                        start(partition)
                quiet_queue.update(dict.fromkeys(quiet))
                start_quiet()
        finally:
            quiet_queue.clear()  # a look-after that ends now starts no other
            for task in list(looking.values()):
                task.cancel()
            await asyncio.gather(*looking.values(), return_exceptions=True)

    def _due(self, now: float) -> tuple[list[int], list[int]]:
        """The partitions to look after at the maintenance instant `now`: those with recent events, and on one
        round of quiet checks in QUIET_LOOK_AFTER_EVERY, the quiet ones of the instant's slice; none whose
        cluster calls are failing."""
        tick = round(now / self.maintenance_s)
        quiet_round = tick // self.slices % QUIET_LOOK_AFTER_EVERY == 0
        owned = [p for p in self.share.owned if not self._failures[p]]
        active = [p for p in owned if self._active_until[p] > now]
        if not quiet_round:
            return active, []
        return active, [p for p in owned if p % self.slices == tick % self.slices and self._active_until[p] <= now]

    async def _look_after(self, partition: int) -> None:
        """Reclaim, trim and recount one partition, outliving the failures a cluster can have."""
        try:
            await self._reclaim(partition)
            await self._maintain(partition)
            self._recount_due[partition].set()  # those another replica queued or left half done
            if time.monotonic() >= self._reindex_due[partition]:
                await self._reindex(partition)
                if partition < keys.top_buckets(len(self.partitions)):
                    await self._sweep(partition)
        except NoGroup:  # not created yet, or a flushed cluster: _consume makes it
            pass
        except StorageError as error:
            # An idle partition's loop finds no failure (it waits for a wake-up): left out from here on too,
            # until a take of its loop works.
            self._failures[partition] += 1
            if self._failures[partition] == 1:
                log.warning("maintenance of partition %d: cluster unavailable: %r", partition, error)

    async def _maintain(self, partition: int) -> None:
        # One run forgets a bounded number of tombstones; run again until it has forgotten every one due,
        # so forgetting keeps up with any delete rate.
        while True:
            _, more = await self.cluster.run(
                self._trim,
                trim_keys(partition, self.generation),
                [self.group, FORGET_CONSUMER_AFTER_MS, self.retention_ms],
                together=True,
            )
            metrics.TRIMS.inc()
            if not int(more):
                return

    async def _recounts(self, partition: int) -> None:
        """Walk the partition's recounts in bounded steps: at once when an apply queued one, and when the
        partition is looked after, for those another replica queued or left half done."""
        due = self._recount_due[partition]
        while True:
            await due.wait()
            due.clear()
            try:
                while True:
                    _, more, noted = await self.cluster.run(
                        self._recount_step,
                        recount_keys(partition, self.generation),
                        [self.group, RECOUNT_STEP],
                        together=True,
                    )
                    metrics.RECOUNT_STEPS.inc()
                    self._noted(partition, int(noted))
                    if not int(more):
                        break
            except NoGroup:  # not created yet, or a flushed cluster: _consume makes it
                pass
            except StorageError as error:
                log.warning("recount of partition %d: cluster unavailable: %r", partition, error)

    # The top list's index (docs/architecture.md, "The top list's index").

    def _noted(self, partition: int, outbox_users: int) -> None:
        """What a script that counts said of the partition's outbox: users noted (copy them), or never indexed."""
        if outbox_users < 0:
            self._unindexed.add(partition)
        elif outbox_users > 0:
            self._copy_soon(partition)

    def _copy_soon(self, partition: int) -> None:
        """Copy the partition's outbox on the next copy tick; if a copy of it is under way, once more after it."""
        if partition in self._copying:
            self._copy_again.add(partition)
            return
        task = self._copying[partition] = asyncio.create_task(self._copy_until_done(partition, time.monotonic()))
        task.add_done_callback(functools.partial(self._copied, partition))
        metrics.TOP_COPIES_DUE.set(len(self._copying))

    def _copied(self, partition: int, task: asyncio.Task[None]) -> None:
        del self._copying[partition]
        metrics.TOP_COPIES_DUE.set(len(self._copying))
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # a defect, not the cluster's failure (those are retried): the maintenance loop ends
            self._copy_defect = error
        elif partition in self._copy_again:
            self._copy_again.discard(partition)
            self._copy_soon(partition)

    async def _copy_until_done(self, partition: int, asked: float) -> None:
        """Copy the partition's outbox on the next tick of COPY_LINGER_S (the copies of a tick share pipelines),
        at most COPIES_AT_ONCE at a time; after a failure, again, backing off as a partition's loop does."""
        failures = 0
        await asyncio.sleep(COPY_LINGER_S - time.monotonic() % COPY_LINGER_S)
        while True:
            self._copy_again.discard(partition)  # this copy reads what the outbox holds from now on
            try:
                async with self._copy_places:
                    await self._copy(partition)
                metrics.TOP_COPIES.labels("copied").inc()
                metrics.TOP_COPY_DELAY.observe(time.monotonic() - asked)
                return
            except StorageError as error:
                metrics.TOP_COPIES.labels("failed").inc()
                failures += 1
                if failures == 1:
                    log.warning("top list copy of partition %d: cluster unavailable: %r", partition, error)
                await asyncio.sleep(min(MAX_RETRY_S, RETRY_S * 2 ** (failures - 1)))

    async def _copy(self, partition: int) -> None:
        """Copy the partition's outbox into its bucket (index_top.lua keeps only what is newer), then clear what
        was copied (clear_outbox.lua keeps what was noted again since), a page at a time. Outside the client's
        concurrency bound, as the takes, and bounded by COPIES_AT_ONCE instead: at a first start at 4,096
        partitions every partition's first commands fill the bound, and a copy's deadline ran out waiting."""
        outbox = keys.top_outbox_key(partition, self.generation)
        bucket = keys.top_bucket_of(partition, len(self.partitions))
        index = [keys.top_key(bucket, self.generation), keys.top_versions_key(bucket, self.generation)]
        cursor = "0"
        while True:
            async with _deadline(COPY_DEADLINE_S, f"the copy of partition {partition}"):
                cursor, copied = await self.cluster.run(
                    self._outbox_notes, [outbox], [cursor, INDEX_STEP], bounded=False, together=True
                )
            if copied:
                async with _deadline(COPY_DEADLINE_S, f"the copy of partition {partition}"):
                    await self.cluster.run(self._index_top, index, copied, bounded=False, together=True)
                async with _deadline(COPY_DEADLINE_S, f"the copy of partition {partition}"):
                    await self.cluster.run(self._clear_outbox, [outbox], copied, bounded=False, together=True)
            cursor = text(cursor)
            if cursor == "0":
                return

    async def _reindex(self, partition: int) -> None:
        """Note every user of the partition in its outbox, in bounded steps (reindex_partition.lua), and copy them."""
        cursor = "0"
        noted = 0
        while True:
            async with _deadline(COPY_DEADLINE_S, f"the reindex of partition {partition}"):
                cursor, noted = await self.cluster.run(
                    self._reindex_step,
                    outbox_keys(partition, self.generation),
                    [cursor, INDEX_STEP],
                    bounded=False,
                    together=True,
                )
            cursor = text(cursor)
            if cursor == "0":
                break
        self._unindexed.discard(partition)
        self._reindex_due[partition] = time.monotonic() + self.reindex_s
        self._noted(partition, int(noted))

    async def _sweep(self, bucket: int) -> None:
        """Note again, in its partition's outbox, each user the bucket holds: the users a failover took back from
        their partition (their removal was never noted), which reindexing the partitions can't find."""
        partitions = len(self.partitions)
        top = keys.top_key(bucket, self.generation)
        cursor = 0
        while True:
            async with (
                _deadline(COPY_DEADLINE_S, f"the sweep of top list bucket {bucket}"),
                self.cluster.bounded("command", "zscan") as client,
            ):
                cursor, scored = await client.zscan(top, cursor, count=INDEX_STEP)
            by_partition: dict[int, list[str]] = defaultdict(list)
            for member, _ in scored:
                user = text(member)
                by_partition[keys.partition_of(user, partitions)].append(user)
            chunks = [
                (partition, users[start : start + INDEX_STEP])
                for partition, users in by_partition.items()
                for start in range(0, len(users), INDEX_STEP)
            ]
            calls = [(outbox_keys(partition, self.generation), users) for partition, users in chunks]
            replies = await self.cluster.run_many(self._note_users, calls, COPY_DEADLINE_S, Confirm.NOTHING)
            for (partition, _), reply in zip(chunks, replies, strict=True):
                if isinstance(reply, BaseException):
                    raise reply
                self._noted(partition, int(reply))
            if not cursor:
                return


@contextlib.asynccontextmanager
async def _deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """A deadline for one call, met or ClusterUnavailable: the script runner retries a shard that is down for as
    long as it is given, and the caller's own backoff must take over."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise ClusterUnavailable(f"{what} did not answer within {seconds} s") from None
