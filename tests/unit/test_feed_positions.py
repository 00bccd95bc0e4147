"""A subscriber's position and the token it issues (profile_svc/events_feed.py Position), without a cluster.

A v3 token names states of the tail reader recorded in the cluster, plus the partitions that stand elsewhere,
and must resume exactly where the position stands. Here the recorded states are kept in memory, and seeded
random schedules drive a position through whatever the feed does to one: batches delivered level or caught
up, batches not recorded, chains started again, catch-up loops to the tail that reach or miss their targets,
moves anywhere. After every step the token, read back against the recorded states, must give every
partition's anchor exactly.
"""

from __future__ import annotations

import random

import pytest

from profile_svc.events_feed import FULL_TOKEN_PREFIX, MAX_OVERRIDES, MAX_SEGMENTS, Batch, Position, Tokens, read_token
from profile_svc.feed_checkpoints import BEFORE_FIRST, MAX_I64, MAX_U64, Anchor, Version

SECRET = b"0f" * 32
PARTITIONS = 6


class Tail:
    """A tail reader's recorded states: chains of versions, each a state of every partition."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.states: dict[Version, list[Anchor]] = {}
        self.clock = 1_700_000_000_000
        self.state = [BEFORE_FIRST] * PARTITIONS
        self.version: Version | None = None
        self.start_chain()

    def start_chain(self) -> None:
        self.version = Version(f"{self.rng.getrandbits(64):016x}", 0)
        self.states[self.version] = list(self.state)

    def anchor(self) -> Anchor:
        self.clock += 1
        return Anchor((self.clock, 0), self.clock - 1_699_999_999_000, self.clock)

    def batch(self, recorded: bool, new_chain: bool) -> Batch:
        """The next batch: one partition moves on; recorded (in this chain or a new one) or not."""
        partition = self.rng.randrange(PARTITIONS)
        after, until = self.state[partition], self.anchor()
        base = None
        if recorded and (new_chain or self.version is None):
            self.start_chain()
            base = list(self.state)
        previous = self.version
        self.state[partition] = until
        if recorded and previous is not None:
            self.version = Version(previous.chain, previous.number + 1)
            self.states[self.version] = list(self.state)
        else:
            self.version = None
        return Batch(partition, after, [], until, previous, self.version, base)

    def resume(self, token: str, tokens: Tokens) -> list[Anchor]:
        """What EventsFeed.resume gives back, with the recorded states read from memory."""
        checked = tokens.check(read_token(token, PARTITIONS))
        if not checked.segments:
            return checked.anchors
        anchors: list[Anchor] = []
        ends = [start for start, _ in checked.segments[1:]] + [PARTITIONS]
        for (start, version), end in zip(checked.segments, ends, strict=True):
            anchors += self.states[version][start:end]
        for partition, anchor in zip(checked.overridden, checked.anchors, strict=True):
            anchors[partition] = anchor
        return anchors


def _deliver(position: Position, batch: Batch) -> None:
    """As EventsFeed._deliver: level with the batch, or brought to where the tail stands after it."""
    position.meet(batch)
    position.move(batch.partition, batch.until)
    position.passed(batch)


@pytest.mark.parametrize("seed", range(300))
def test_every_token_resumes_exactly_where_its_position_stands(seed: int) -> None:
    rng = random.Random(seed)
    tail, tokens = Tail(rng), Tokens(SECRET, PARTITIONS)
    position = Position(tail.state, tokens, [(0, tail.version)])
    queue: list[Batch] = []
    compact = 0
    for step in range(60):
        kind = rng.choices(["batch", "deliver", "catch up", "stray"], [4, 4, 1, 1])[0]
        if kind == "batch":
            queue.append(tail.batch(recorded=rng.random() < 0.9, new_chain=rng.random() < 0.05))
        elif kind == "deliver" and queue:
            _deliver(position, queue.pop(0))
        elif kind == "catch up":  # the queue overflowed: read from the stream up to the tail, partition by partition
            queue.clear()
            targets, version = list(tail.state), tail.version
            for partition, target in enumerate(targets):
                if position.anchors[partition] != target:
                    position.move(partition, target if rng.random() < 0.9 else tail.anchor())
                position.caught_up(partition, target, version)
                if rng.random() < 0.2:  # a token part-way through the loop
                    token = position.token()
                    assert tail.resume(token, tokens) == position.anchors, (seed, step, "mid catch-up")
        elif kind == "stray":  # a partition left somewhere no recorded state has it
            position.move(rng.randrange(PARTITIONS), tail.anchor())
        token = position.token()
        compact += not token.startswith(FULL_TOKEN_PREFIX)
        assert tail.resume(token, tokens) == position.anchors, (seed, step, kind)
    assert compact > 0, "no token named a recorded state"


def test_a_compact_token_with_the_largest_numbers_fits_the_length_bound() -> None:
    tokens = Tokens(SECRET, 4096)
    largest = Anchor((MAX_U64, MAX_U64), MAX_I64, MAX_I64)
    runs = [(start, Version("f" * 16, MAX_I64)) for start in range(4096 - MAX_SEGMENTS, 4096)]
    runs[0] = (0, runs[0][1])
    moved = {partition: largest for partition in range(4096 - MAX_OVERRIDES, 4096)}
    checked = tokens.check(read_token(tokens.issue_compact(runs, moved), 4096))
    assert (checked.segments, dict(zip(checked.overridden, checked.anchors, strict=True))) == (runs, moved)
