"""Where the change feed's tail reader has stood, kept in the cluster, so a resume token can name a state
instead of carrying every partition's position (at 4,096 partitions that is 44-200 KB, in every message).

While a process has subscribers its tail reader's states form a chain: its state when the chain starts (a
snapshot: every partition's anchor), then one version per batch it hands out (the batch's partition and where
it stands after it). Every version is recorded before its batch is handed out, so a token can only name a
recorded version. A subscriber level with the tail stands exactly at the tail's latest version: its token is
that version, and at most one partition on top (the batch it is part-way through). See events_feed.Position.

A chain is kept in blocks, one list key each (keys.checkpoint_key: the chain's hash tag, so one slot), of at
most `block_versions` versions: a block opens with a snapshot of the state before its first version, then
holds one element per version. A version is found by reading its block and replaying it. Each write says
which version the block must end at (record_checkpoint.lua): when a failover lost some of a block's versions
the write fails instead of recording a gap, and the feed starts a new chain. A token naming a lost version is
refused (HistoryChanged); one naming an expired block is EVENTS_TRIMMED. Blocks expire `ttl_s` after their
last write or resume, and the chain's current block is kept alive while the tail reader runs.

Cost: about 50 bytes a version (a batch, one or more events of one partition), plus a snapshot (about 30
bytes a partition) every `block_versions` versions; per process with subscribers, for `ttl_s`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from common.errors import HistoryChanged, StorageError, Trimmed
from common.storage import keys
from common.storage.cluster import Cluster
from common.storage.stream_ids import StreamId, format_id

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).parent / "scripts"
MAX_U64 = 2**64 - 1
MAX_I64 = 2**63 - 1
WRITE_DEADLINE_S = 1.0  # a write not done by then breaks the chain: batches go out unversioned meanwhile
RETRY_S = 0.5  # after a failed write, how long batches go out unversioned before a new chain is tried
CHAIN_CHARS = 16  # hex digits of a chain's random name
PARSED_BLOCKS = 4  # blocks kept parsed for resumes (at 4,096 partitions about 2 MB each)
START_OVER = "start again without a token and re-read whatever you derive from the events"
# Tail states stay this much longer than the events: a token unused for the retention window still resumes.
MARGIN_S = 60.0


class Anchor(NamedTuple):
    """An entry a position can stand on: its id, its offset in the stream's history, and its time."""

    id: StreamId
    n: int
    ts: int


BEFORE_FIRST = Anchor((0, 0), 0, 0)


class Version(NamedTuple):
    """One recorded state of a tail reader: its chain's name and the version's number in it."""

    chain: str
    number: int


class Block(NamedTuple):
    """One block of a chain, parsed: its snapshot (the state at `snapshot_number`), then its versions' changes
    (number, partition, anchor), in order."""

    snapshot_number: int
    snapshot: list[Anchor]
    changes: list[tuple[int, int, Anchor]]
    last: int


class Recorded(NamedTuple):
    """What a write recorded: the version the state before it is, and that of its first change (the others
    follow in order). `new_chain`: `before` starts a chain, so nothing before names it."""

    before: Version
    first: int
    new_chain: bool


def anchor_text(anchor: Anchor) -> str:
    return f"{format_id(anchor.id)}.{anchor.n}.{anchor.ts}"


def parse_anchor(text: str, recorded: bool = False) -> Anchor:
    """`ms-seq.n.ts`, each a decimal in the range the cluster accepts; ValueError otherwise. A token's anchor
    with an id has an offset; a `recorded` one (a tail state) may stand on an id with none yet: a stream whose
    last id was set with no entry added (XSETID), as the feed's model makes."""
    entry, n, ts = text.split(".")
    ms, seq = entry.split("-")
    anchor = Anchor(
        (parse_decimal(ms, MAX_U64), parse_decimal(seq, MAX_U64)), parse_decimal(n, MAX_I64), parse_decimal(ts, MAX_I64)
    )
    if (anchor.n == 0) != (anchor.id == (0, 0)) and not (recorded and anchor.n == 0):
        raise ValueError("only the position before the first entry has offset 0")
    return anchor


def parse_decimal(text: str, maximum: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20 or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"not a canonical decimal: {text!r}")
    value = int(text)
    if value > maximum:
        raise ValueError(f"out of range: {text}")
    return value


def is_chain(text: str) -> bool:
    return len(text) == CHAIN_CHARS and all(c in "0123456789abcdef" for c in text)


class Checkpoints:
    """One process's chain of tail states, written and read in the cluster."""

    def __init__(self, cluster: Cluster, partitions: int, retention_s: float) -> None:
        self.cluster = cluster
        self.partitions = partitions
        self.ttl_ms = int((retention_s + MARGIN_S) * 1000)
        # A block's snapshot costs about as much as 4 partitions' worth of versions: a resume replays at most that.
        self.block_versions = max(256, 4 * partitions)
        # Idempotent: a write that landed, sent again, finds its own last version and changes nothing.
        self._record = cluster.script(SCRIPTS / "record_checkpoint.lua", repeatable=True)
        self.chain: str | None = None  # None: no chain (not started yet, or broken by a failed write)
        self.last = 0  # the chain's last recorded version
        self._retry_at = 0.0
        self._blocks: OrderedDict[tuple[str, int], Block] = OrderedDict()

    def _block_key(self, chain: str, number: int) -> str:
        return keys.checkpoint_key(chain, number // self.block_versions)

    async def record(self, before: Sequence[Anchor], changes: Sequence[tuple[int, Anchor]]) -> Recorded | None:
        """Record `changes` (a partition, where it stands after), in order, after the state `before`: the
        chain's last version, or a new chain's snapshot when there is none. None when nothing was recorded
        (the write failed, or one failed less than RETRY_S ago): the changes go out unversioned."""
        if self.chain is None:
            if time.monotonic() < self._retry_at:
                return None
            chain, base, first = secrets.token_hex(CHAIN_CHARS // 2), 0, 1
            elements = [_snapshot(base, before)]
            expected = ""
        else:
            chain, base, first = self.chain, self.last, self.last + 1
            elements, expected = [], str(base)
            if changes and (base + len(changes)) // self.block_versions != base // self.block_versions:
                # The next block opens with the state these changes start from, its versions at its start.
                first = (base // self.block_versions + 1) * self.block_versions
                elements, expected = [_snapshot(base, before)], ""
        if not changes and expected:
            return Recorded(Version(chain, base), first, False)
        elements += [f"{first + i} {partition} {anchor_text(anchor)}" for i, (partition, anchor) in enumerate(changes)]
        last = first + len(changes) - 1 if changes else base
        try:
            async with asyncio.timeout(WRITE_DEADLINE_S):
                done = await self.cluster.run(
                    self._record, [self._block_key(chain, first)], [expected, last, self.ttl_ms, *elements]
                )
        except (StorageError, TimeoutError) as error:
            done, failure = 0, repr(error)
        else:
            failure = "the block no longer ends where this process left it (a failover lost some of it)"
        if not done:
            if self.chain is not None or self._retry_at == 0.0:
                log.warning(
                    "change-feed checkpoints: a write failed (%s); tokens carry every partition until a "
                    "new chain is recorded",
                    failure,
                )
            self.chain, self._retry_at = None, time.monotonic() + RETRY_S
            return None
        new_chain = self.chain is None
        self.chain, self.last = chain, last
        return Recorded(Version(chain, base), first, new_chain)

    async def keep_alive(self) -> None:
        """Renew the expiry of the chain's current block: an idle feed's latest tokens stay good."""
        if self.chain is None:
            return
        async with self.cluster.bounded() as client:
            await client.pexpire(self._block_key(self.chain, self.last), self.ttl_ms)

    async def load(self, version: Version) -> list[Anchor]:
        """The state a version names, every partition's anchor; Trimmed when its block expired, HistoryChanged
        when the block no longer holds it (a failover lost it). Renews the block's expiry. The last blocks
        read stay parsed in memory: clients reconnecting together (a replica restarted) name the same few."""
        block_key = (version.chain, version.number // self.block_versions)
        block = self._blocks.get(block_key)
        if block is None or block.last < version.number:
            block = await self._read_block(version)
            self._blocks[block_key] = block
            while len(self._blocks) > PARSED_BLOCKS:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(block_key)
        state = list(block.snapshot)
        found = block.snapshot_number == version.number
        for number, partition, anchor in block.changes:
            if number > version.number:
                break
            state[partition] = anchor
            found = number == version.number
        if not found or len(state) != self.partitions:
            raise HistoryChanged(
                f"the position of the resume token was lost from the cluster (a failover lost it); {START_OVER}"
            )
        return state

    async def _read_block(self, version: Version) -> Block:
        key = self._block_key(version.chain, version.number)
        async with self.cluster.bounded() as client:
            elements = await client.lrange(key, 0, -1)
            if elements:
                await client.pexpire(key, self.ttl_ms)
        if not elements:
            raise Trimmed(
                "the position of the resume token is no longer kept (positions are kept for "
                f"PROFILEMESH_EVENTS_RETENTION_S + {MARGIN_S:g} s after their last use); {START_OVER}"
            )
        first, *rest = (
            (element.decode() if isinstance(element, bytes) else element).split(" ", 2) for element in elements
        )
        if first[1] != "S":
            raise HistoryChanged(f"the position of the resume token was recorded incompletely; {START_OVER}")
        snapshot = [parse_anchor(text, recorded=True) for text in first[2].split(",")]
        changes = [(int(number), int(partition), parse_anchor(text, recorded=True)) for number, partition, text in rest]
        return Block(int(first[0]), snapshot, changes, changes[-1][0] if changes else int(first[0]))


def _snapshot(number: int, state: Sequence[Anchor]) -> str:
    return f"{number} S " + ",".join(anchor_text(anchor) for anchor in state)
