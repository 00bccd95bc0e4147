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

from aggregator_svc.aggregator import APPLY_SCRIPT, RECOUNT_SCRIPT, TRIM_SCRIPT
from tests.aggregation_model import GROUP, PartitionKeys, run_parallel
from tests.helpers import FunctionCall, is_function_call, load_functions

RUNS = int(os.environ.get("PROFILEMESH_MODEL_RUNS", "5000"))
BOUND_MS = 500
BATCH = 250  # the aggregator's default (and largest) batch size


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
        load_functions(node)
        self.apply_script = FunctionCall(APPLY_SCRIPT, node)
        self.recount_script = FunctionCall(RECOUNT_SCRIPT, node)
        self.trim_script = FunctionCall(TRIM_SCRIPT, node)
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
        """Apply by id as the aggregator does, and walk the recount it may leave."""
        applied, _, _, queued, _ = self.apply_script(keys=self.keys.apply_keys, args=[GROUP, *ids], client=self.node)
        if queued:
            self.recount()
        return int(applied)

    def recount(self) -> None:
        while True:
            _, more, _ = self.recount_script(keys=self.keys.recount_keys, args=[GROUP, 500], client=self.node)
            if not more:
                return

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
        if is_function_call(entry["command"]):
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


def test_one_batch_of_the_largest_size_of_deletes(node: redis.Redis, timed: list[float]) -> None:
    part = Partition(node, "{cost-batch}")
    users = [f"u{i}" for i in range(BATCH)]
    part.append([(user, kind) for user in users for kind in ("create", "read", "read", "read")])
    part.apply_everything()
    part.append([(user, "delete") for user in users])

    measure(node, timed, lambda: part.apply(part.deliver("one")))
    report(f"one batch of {BATCH} deletes", timed)
    assert node.zcard(part.reads) == 0


def test_an_entry_trimmed_while_pending_is_acknowledged_not_counted(node: redis.Redis) -> None:
    """A pending entry whose content is gone (trimmed by hand, say) must not stay pending forever."""
    part = Partition(node, "{gone}")
    part.append([("ann", "create"), ("ann", "read")])
    create, read = part.deliver("c")
    node.xdel(part.events, read)
    applied, gone, *_ = part.apply_script(keys=part.keys.apply_keys, args=[GROUP, create, read], client=node)
    assert (applied, gone) == (1, 1)
    assert node.xpending(part.events, GROUP)["pending"] == 0
    assert part.score("ann") is None


def test_a_malformed_entry_is_acknowledged_and_skipped_and_the_rest_counted(node: redis.Redis) -> None:
    """Lua does not roll back: nothing may fail midway. A malformed entry can never become valid, so it is
    acknowledged (else it is reclaimed for ever and holds back trimming), returned, and counts nowhere."""
    part = Partition(node, "{malformed}")
    part.append([("ann", "create"), ("ann", "read")])
    node.xadd(part.events, {"type": "read", "ts": "0"})  # no user
    node.xadd(part.events, {"user": "ann", "type": "bogus", "ts": "0"})  # unknown type
    node.xadd(part.events, {"user": "ann", "ts": "0"})  # no type
    part.append([("ann", "read")])
    ids = [entry_id for entry_id, _ in node.xrange(part.events)]
    part.deliver("c")
    applied, gone, malformed, queued, _ = part.apply_script(keys=part.keys.apply_keys, args=[GROUP, *ids])
    assert (applied, gone, malformed, queued) == (3, 0, ids[2:5], 0)
    assert part.score("ann") == 2
    assert node.hgetall(part.keys.apply_keys[2]) == {"create": "1", "read": "2"}
    assert node.xpending(part.events, GROUP)["pending"] == 0
    # The same through a take.
    node.xadd(part.events, {"type": "delete", "ts": "0"})
    part.append([("ann", "read")])
    reply = part.apply_script(keys=part.keys.apply_keys, args=[GROUP, ">", "c", BATCH])
    assert reply[:3] == [1, 0, 2] and len(reply[4]) == 1
    assert part.score("ann") == 3


@pytest.mark.parametrize(
    "args",
    [["1-0", "not-an-id"], ["1-0", ""], [">", "c", "0"], [">", "c", str(BATCH + 1)], [">", "", "1"], [">", "c", "1.5"]],
)
def test_bad_arguments_are_refused_before_anything_is_written(node: redis.Redis, args: list[str]) -> None:
    part = Partition(node, "{bad-args}")
    part.append([("ann", "create"), ("ann", "read")])
    first, second = part.deliver("c")
    args = [second if arg == "1-0" else arg for arg in args]
    with pytest.raises(redis.ResponseError, match="apply_events"):
        part.apply_script(keys=part.keys.apply_keys, args=[GROUP, *args])
    assert node.xpending(part.events, GROUP)["pending"] == 2
    assert node.exists(*part.keys.apply_keys[1:]) == 0
    with pytest.raises(redis.ResponseError, match="at most"):
        part.apply_script(keys=part.keys.apply_keys, args=[GROUP, *[first] * (BATCH + 1)])


def test_a_repeated_id_is_one_entry_and_defeats_no_contiguity_test(node: redis.Redis) -> None:
    """ids [delete, create, read, read] with a pending read between: the span from the first id to the last has
    four entries and the batch four ids, but the read between is not the batch's: it must not count."""
    part = Partition(node, "{repeated}")
    part.append([("ann", "create"), ("ann", "read")])
    part.apply_everything()
    part.append([("ann", "delete"), ("ann", "create"), ("ann", "read"), ("ann", "read")])
    delete, create, pending_read, read = part.deliver("c")
    applied, *_ = part.apply_script(keys=part.keys.apply_keys, args=[GROUP, delete, create, read, read])
    assert applied == 3
    part.recount()
    assert part.score("ann") == 1  # the read still pending is not counted
    assert part.apply([pending_read]) == 1
    assert part.score("ann") == 2


def test_a_recount_in_steps_counts_reads_applied_meanwhile_once(node: redis.Redis) -> None:
    """A late delete queues a recount; while it is walked in steps of one entry, reads on both sides of its
    cursor are applied by other batches: each counts once, whichever side it falls."""
    part = Partition(node, "{steps}")
    part.append([("ann", "create"), ("ann", "read")])
    part.apply_everything()
    part.append([("ann", "delete")])
    [delete] = part.deliver("dead")
    part.append([("ann", "create")] + [("ann", "read")] * 6)
    create, *reads = part.deliver("alive")
    part.apply([create, reads[0], reads[3]])  # applied before the recount is queued
    applied, _, _, queued, _ = part.apply_script(keys=part.keys.apply_keys, args=[GROUP, delete])
    assert (applied, queued) == (1, 1)

    def step() -> int:
        _, more, _ = part.recount_script(keys=part.keys.recount_keys, args=[GROUP, 3])
        return int(more)

    assert step() == 1  # the cursor is past create, reads[0] (counted) and reads[1] (pending: not counted)
    part.apply([reads[1], reads[4]])  # one behind the cursor (counted now), one ahead (counted by the walk)
    while step():
        pass
    part.apply([reads[2], reads[5]])  # after the walk: counted as usual
    assert part.score("ann") == 6
    assert node.exists(part.keys.recount_keys[2]) == 0


def test_maintenance_forgets_any_number_of_tombstones_in_bounded_runs(node: redis.Redis) -> None:
    part = Partition(node, "{forget}")
    users = [f"u{i}" for i in range(1200)]
    part.append([(user, kind) for user in users for kind in ("create", "delete")])
    part.apply_everything()
    part.append([("late", "create")])
    node.xadd(part.events, {"user": "late", "type": "read", "ts": "0"}, id=f"{2**42}-0")  # far later
    part.apply_everything()
    runs = 0
    while True:
        runs += 1
        _, more = part.trim_script(keys=part.keys.trim_keys, args=[GROUP, 600_000, 0])
        if not more:
            break
    assert runs == 3  # 500 + 500 + 200
    assert node.hlen(part.keys.apply_keys[3]) == 0 and node.zcard(part.keys.apply_keys[4]) == 0
