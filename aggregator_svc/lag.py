"""Per-partition consumer lag for Prometheus: read from the streams themselves, apart from the apply path.

Every replica reports the same figures (they describe the shared consumer group), so a query
takes `max by (partition)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

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
# Readings of single partitions (those no call per node answered for) in flight at once: what they hold of the
# process's concurrency bound. A reading of a partition on a shard that is down waits out the client's retries,
# and at 4,096 partitions a whole round of them held every place, so that the aggregator's own work waited.
CONCURRENT_READINGS = 8
NODE_CALL_S = 2.0  # how long a round's calls per primary may take, retries included
SCRIPTS = Path(__file__).parent / "scripts"


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


def node_figures(row: Sequence[Any], now_ms: int) -> dict[str, float]:
    """partition_figures' figures from a row of lag_on_node.lua's reply."""
    length, lag, pending, oldest_pending_id, first_undelivered_id = row
    return {
        "length": int(length),
        "lag": int(lag),
        "pending": int(pending),
        "oldest_pending": _age_s(oldest_pending_id, now_ms),
        "oldest_undelivered": _age_s(first_undelivered_id, now_ms),
    }


def _age_s(entry_id: bytes | str, now_ms: int) -> float:
    return max(0, now_ms - parse_id(entry_id)[0]) / 1000 if entry_id else 0.0


async def collect_lag(cluster: Cluster, group: str, partition_count: int) -> None:
    """Every INTERVAL_S, refresh the stream and lag gauges of the partitions with a backlog and of a few quiet
    ones in turn (every partition in the first round), until cancelled. A round is one call per primary
    (lag_on_node.lua); the partitions no call answered for (a node down, a slot moving) are read one by one."""
    await cluster.layout_checked()  # the streams' names need the layout's generation
    on_node = cluster.script(SCRIPTS / "lag_on_node.lua", repeatable=True)
    partitions = range(partition_count)
    backlogged: set[int] = set()
    start = 0
    gauges = {
        "length": metrics.STREAM_LENGTH,
        "lag": metrics.LAG,
        "pending": metrics.PENDING,
        "oldest_pending": metrics.OLDEST_PENDING_AGE,
        "oldest_undelivered": metrics.OLDEST_UNDELIVERED_AGE,
    }

    def report(partition: int, figures: dict[str, float]) -> None:
        for name, gauge in gauges.items():
            gauge.labels(str(partition)).set(figures[name])
        if figures["lag"] or figures["pending"]:
            backlogged.add(partition)
        else:
            backlogged.discard(partition)

    readings = asyncio.Semaphore(CONCURRENT_READINGS)

    async def refresh(partition: int, now_ms: int) -> None:
        try:
            async with readings, cluster.bounded("command", "lag") as client:
                stream = keys.events_key(partition, cluster.generation)
                report(partition, await partition_figures(client, stream, group, now_ms))
        except (TimeoutError, StorageError, OSError) as error:
            log.debug("partition %d: lag not read: %r", partition, error)
        except Exception:  # a reply of an unexpected shape must not stop the aggregator itself
            log.exception("partition %d: lag not read", partition)

    async def read(turn: list[int], now_ms: int) -> None:
        names = [keys.events_key(partition, cluster.generation) for partition in turn]
        try:
            answered, left = await cluster.run_on_nodes(on_node, names, [group], NODE_CALL_S)
            for members, rows in answered:
                for index, row in zip(members, rows, strict=True):
                    report(turn[index], node_figures(row, now_ms))
        except (TimeoutError, StorageError, OSError) as error:
            log.debug("lag not read per node: %r", error)
            left = list(range(len(turn)))
        except Exception:  # a reply of an unexpected shape must not stop the aggregator itself
            log.exception("lag not read per node")
            left = list(range(len(turn)))
        # A partition on a shard that is down waits out its timeouts without delaying the others.
        await asyncio.gather(*(refresh(turn[index], now_ms) for index in left))

    turn = list(partitions)  # the first round reads every partition
    while True:
        started = time.monotonic()
        await read(turn, int(time.time() * 1000))
        # A round every INTERVAL_S, however long its readings took.
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - started)))
        turn = sorted(backlogged)[:BACKLOGGED]
        # Beyond BACKLOGGED too, in turn: the next QUIET partitions not read already.
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
