"""Per-partition consumer lag for Prometheus: read from the streams themselves, apart from the apply path.

Every replica reports the same figures (they describe the shared consumer group), so a query
takes `max by (partition)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from common.errors import StorageError
from common.runtime import metrics
from common.storage import keys
from common.storage.cluster import Cluster, ClusterClient
from common.storage.replies import text
from common.storage.stream_ids import parse_id

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
# Partitions read per interval: every one that had a backlog (lag or pending entries) at its last reading, up to
# BACKLOGGED; and QUIET of the others in turn (4,096 partitions: each quiet one every 512 s). What the gauges
# cost while nothing happens stays flat as partitions grow; a partition's backlog is followed every second.
BACKLOGGED = 64
QUIET = 8
# Counting undelivered entries by hand (when the server can't tell the lag) stops here.
COUNT_LIMIT = 10_000
# Readings in flight at once: what they hold of the process's concurrency bound. A reading of a partition on a
# shard that is down waits out the client's retries, and at 4,096 partitions a whole round of them held every
# place, so that the aggregator's own work waited.
CONCURRENT_READINGS = 8


async def partition_figures(client: ClusterClient, stream: str, group: str, now_ms: int) -> dict[str, float]:
    """Stream length, undelivered (lag) and pending entries, and the age in seconds of the oldest of each."""
    length = await client.xlen(stream)
    info = next((g for g in await client.xinfo_groups(stream) if text(g["name"]) == group), None)
    lag: int | None
    if info is None:  # no aggregator has created the group yet: everything is undelivered
        lag, pending, oldest_pending, last_delivered = length, 0, 0.0, "0-0"
    else:
        last_delivered = text(info["last-delivered-id"])
        pending = int(info["pending"])
        lag = None if info.get("lag") is None else int(info["lag"])
        oldest_pending = 0.0
        if pending:
            summary = await client.xpending(stream, group)
            if summary["min"] is not None:  # None: acknowledged since XINFO GROUPS was read
                oldest_pending = max(0, now_ms - parse_id(cast(bytes, summary["min"]))[0]) / 1000
    if lag is None:  # the server can't tell after deletions inside the range: count what is left
        lag = len(await client.xrange(stream, min=f"({last_delivered}", count=COUNT_LIMIT) or ())
    oldest_undelivered = 0.0
    if lag:  # an idle partition costs two commands a second: XLEN and XINFO GROUPS
        first_undelivered = await client.xrange(stream, min=f"({last_delivered}", count=1)
        if first_undelivered:
            oldest_undelivered = max(0, now_ms - parse_id(cast(bytes, first_undelivered[0][0]))[0]) / 1000
    return {
        "length": length,
        "lag": int(lag),
        "pending": pending,
        "oldest_pending": oldest_pending,
        "oldest_undelivered": oldest_undelivered,
    }


async def collect_lag(cluster: Cluster, group: str, partition_count: int) -> None:
    """Every INTERVAL_S, refresh the stream and lag gauges of the partitions with a backlog and of a few quiet
    ones in turn, until cancelled."""
    await cluster.layout_checked()  # the streams' names need the layout's generation
    partitions = range(partition_count)
    backlogged: set[int] = set(partitions)  # at the start, every partition is read once as soon as may be
    start = 0
    gauges = {
        "length": metrics.STREAM_LENGTH,
        "lag": metrics.LAG,
        "pending": metrics.PENDING,
        "oldest_pending": metrics.OLDEST_PENDING_AGE,
        "oldest_undelivered": metrics.OLDEST_UNDELIVERED_AGE,
    }

    readings = asyncio.Semaphore(CONCURRENT_READINGS)

    async def refresh(partition: int, now_ms: int) -> None:
        try:
            async with readings, cluster.bounded("command", "lag") as client:
                stream = keys.events_key(partition, cluster.generation)
                figures = await partition_figures(client, stream, group, now_ms)
        except (TimeoutError, StorageError, OSError) as error:
            log.debug("partition %d: lag not read: %r", partition, error)
            return
        except Exception:  # a reply of an unexpected shape must not stop the aggregator itself
            log.exception("partition %d: lag not read", partition)
            return
        for name, gauge in gauges.items():
            gauge.labels(str(partition)).set(figures[name])
        if figures["lag"] or figures["pending"]:
            backlogged.add(partition)
        else:
            backlogged.discard(partition)

    while True:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        turn = sorted(backlogged)[:BACKLOGGED]
        # Beyond BACKLOGGED too, in turn: the next QUIET partitions not read already (at the start every one is
        # backlogged, and the lowest are both: 64 new readings a second where there are 72).
        taking, quiet = set(turn), 0
        for _ in range(len(partitions)):
            if quiet == QUIET:
                break
            partition = partitions[start]
            start = (start + 1) % len(partitions)
            if partition not in taking:
                turn.append(partition)
                taking.add(partition)
                quiet += 1
        # A partition on a shard that is down waits out its timeouts without delaying the others.
        await asyncio.gather(*(refresh(partition, now_ms) for partition in turn))
        # A round every INTERVAL_S, however long its readings took (CONCURRENT_READINGS at a time).
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))
