"""The aggregator's scripts against a standalone node: random interleavings checked against a model,
and the cost of a batch's script in the worst cases deletes can make.

The cost tests time every apply script on the node (SLOWLOG, in microseconds) and assert only a
generous bound, 500 ms, far above what they measure, so they fail on a quadratic script, not on a
busy machine; run with `-s` to see the figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest
import redis
from redis.commands.core import Script

from aggregator_svc.aggregator import APPLY_SCRIPT
from common.scripts import script_source
from tests.aggregation_model import GROUP, PartitionKeys, run_parallel

RUNS = int(os.environ.get("PROFILEMESH_MODEL_RUNS", "5000"))
BOUND_MS = 500
BATCH = 500  # the aggregator's default batch size


def test_random_interleavings_count_like_a_sequential_replay(node: redis.Redis) -> None:
    url = "unix://" + node.connection_pool.connection_kwargs["path"]
    wrong = run_parallel(url, list(range(RUNS)))
    assert not wrong, (
        f"{len(wrong)} of {RUNS} runs counted wrong; replay one with "
        f"`python -m tests.aggregation_model --url URL --seed N`: seeds {sorted(wrong)[:20]}; "
        f"first: {wrong[min(wrong)]}"
    )


class Partition:
    """One partition's keys on the node, and the steps a replica takes on them."""

    def __init__(self, node: redis.Redis, tag: str) -> None:
        self.node = node
        self.keys = PartitionKeys(tag)
        self.events, self.reads = self.keys.apply_keys[0], self.keys.apply_keys[1]
        self.apply_script: Script = node.register_script(script_source(APPLY_SCRIPT))
        node.delete(*self.keys.apply_keys)
        node.xgroup_create(self.events, GROUP, id="0", mkstream=True)

    def append(self, events: list[tuple[str, str]]) -> None:
        with self.node.pipeline(transaction=False) as pipe:
            for user, kind in events:
                pipe.xadd(self.events, {"user": user, "type": kind, "ts": "0"})
            pipe.execute()

    def deliver(self, consumer: str, count: int = BATCH) -> list[str]:
        reply = self.node.xreadgroup(GROUP, consumer, {self.events: ">"}, count=count)
        return [entry_id for _, entries in reply or () for entry_id, _ in entries]

    def apply(self, ids: list[str]) -> int:
        applied, _ = self.apply_script(keys=self.keys.apply_keys, args=[GROUP, *ids], client=self.node)
        return int(applied)

    def apply_everything(self, consumer: str = "setup") -> None:
        while ids := self.deliver(consumer):
            self.apply(ids)

    def score(self, user: str) -> float | None:
        return self.node.zscore(self.reads, user)


@pytest.fixture
def timed(node: redis.Redis) -> Iterator[list[float]]:
    """Durations (ms) of the apply scripts run while the test's measured part runs: SLOWLOG logs every command."""
    node.config_set("slowlog-log-slower-than", 0)
    node.config_set("slowlog-max-len", 100_000)
    durations: list[float] = []
    yield durations
    node.config_set("slowlog-log-slower-than", 10_000)


def measure(node: redis.Redis, durations: list[float], step) -> None:
    node.slowlog_reset()
    step()
    for entry in node.slowlog_get(100_000):
        command = entry["command"]
        if (command.decode() if isinstance(command, bytes) else command).upper().startswith("EVALSHA"):
            durations.append(entry["duration"] / 1000)


def report(name: str, durations: list[float]) -> None:
    ranked = sorted(durations)

    def percentile(q: float) -> float:  # nearest rank: always a measured value
        return ranked[max(0, math.ceil(q * len(ranked)) - 1)]

    print(
        f"\n{name}: {len(ranked)} scripts, p50 {percentile(0.5):.2f} ms, p99 {percentile(0.99):.2f} ms, "
        f"max {ranked[-1]:.2f} ms"
    )
    assert max(durations) < BOUND_MS


def test_a_bulk_delete_read_ahead_by_three_replicas(node: redis.Redis, timed: list[float]) -> None:
    """1,500 users deleted at once; three replicas each hold a batch before any applies (the worst order)."""
    part = Partition(node, "{cost-bulk}")
    users = [f"u{i}" for i in range(1500)]
    part.append([(user, kind) for user in users for kind in ("create", "read", "read")])
    part.apply_everything()
    part.append([(user, "delete") for user in users])

    def three_replicas() -> None:
        while held := [ids for ids in (part.deliver(replica) for replica in ("r1", "r2", "r3")) if ids]:
            for ids in reversed(held):  # the last reader applies first
                part.apply(ids)

    measure(node, timed, three_replicas)
    report("bulk delete of 1,500 users through 3 replicas", timed)
    assert node.zcard(part.reads) == 0
    assert node.hget(part.keys.apply_keys[2], "delete") == "1500"


def test_reclaimed_deletes_with_many_later_entries(node: redis.Redis, timed: list[float]) -> None:
    """200 deletes left pending by a dead replica while 20,000 later entries (re-creates among them) were applied."""
    part = Partition(node, "{cost-reclaim}")
    users = [f"u{i}" for i in range(200)]
    part.append([(user, kind) for user in users for kind in ("create", "read")])
    part.apply_everything()
    part.append([(user, "delete") for user in users])
    assert len(part.deliver("dead")) == 200
    later = [(user, kind) for user in users for kind in ("create", *["read"] * 9)]
    later += [(f"other{i % 1000}", "read") for i in range(18_000)]
    part.append(later)
    part.apply_everything("alive")

    def reclaim() -> None:
        _, entries, *_ = node.xautoclaim(part.events, GROUP, "claimer", min_idle_time=0, count=BATCH)
        assert part.apply([entry_id for entry_id, _ in entries]) == 200

    measure(node, timed, reclaim)
    report("200 reclaimed deletes with 20,000 later entries", timed)
    # The deletes came last but are older: each user keeps the 9 reads of its second life.
    assert {part.score(user) for user in users} == {9.0}
    assert node.xpending(part.events, GROUP)["pending"] == 0


def test_one_batch_of_500_deletes(node: redis.Redis, timed: list[float]) -> None:
    part = Partition(node, "{cost-batch}")
    users = [f"u{i}" for i in range(500)]
    part.append([(user, kind) for user in users for kind in ("create", "read", "read", "read")])
    part.apply_everything()
    part.append([(user, "delete") for user in users])

    measure(node, timed, lambda: part.apply(part.deliver("one")))
    report("one batch of 500 deletes", timed)
    assert node.zcard(part.reads) == 0


def test_an_entry_trimmed_while_pending_is_acknowledged_not_counted(node: redis.Redis) -> None:
    """A pending entry whose content is gone (trimmed by hand, say) must not stay pending forever."""
    part = Partition(node, "{gone}")
    part.append([("ann", "create"), ("ann", "read")])
    create, read = part.deliver("c")
    node.xdel(part.events, read)
    applied, gone = part.apply_script(keys=part.keys.apply_keys, args=[GROUP, create, read], client=node)
    assert (applied, gone) == (1, 1)
    assert node.xpending(part.events, GROUP)["pending"] == 0
    assert part.score("ann") is None
