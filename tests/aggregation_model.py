"""A model-based check of the aggregator's scripts: random histories and consumer schedules on a real node.

One run writes a random history of profile events (creates, reads, updates, deletes and re-creates of
a handful of users) into one partition's stream while several consumers read it in random-sized
batches, stall, die with entries pending, reclaim them with XAUTOCLAIM, re-read their own pending
entries, re-apply old batches and trim the stream (forgetting tombstones), all with the project's
own apply_events.lua and trim_acknowledged.lua. At the end every entry is applied, and the partition's
statistics must equal what a sequential replay of the history gives.

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

import redis
from redis.commands.core import Script

from aggregator_svc.aggregator import APPLY_SCRIPT, TRIM_SCRIPT
from common.scripts import script_source
from tests.helpers import expected_statistics

GROUP = "aggregator"
USERS = ("ann", "bob", "cy", "dee")


@dataclass(frozen=True)
class PartitionKeys:
    """A made-up partition's keys, named like the real ones (common.keys) under a tag of the run's own."""

    tag: str

    @property
    def events(self) -> str:
        return f"events:{self.tag}"

    @property
    def apply_keys(self) -> list[str]:
        """What apply_events.lua takes: stream, reads, totals, tombstones, tombstones by time."""
        return [self.events, *(f"stats:{name}:{self.tag}" for name in ("reads", "totals", "deleted", "deleted-at"))]

    @property
    def trim_keys(self) -> list[str]:
        """What trim_acknowledged.lua takes: stream, tombstones, tombstones by time, the trim record."""
        return [self.apply_keys[0], *self.apply_keys[3:], f"{self.events}:trimmed"]


# An apply function: the node, the script, the partition and a batch of entry ids; it applies and acknowledges them.
Apply = Callable[[redis.Redis, Script, PartitionKeys, list[str]], object]


def apply_ids(node: redis.Redis, script: Script, keys: PartitionKeys, ids: list[str]) -> object:
    """How the aggregator calls apply_events.lua: the group, then the entry ids."""
    return script(keys=keys.apply_keys, args=[GROUP, *ids], client=node)


@dataclass
class Consumer:
    name: str
    held: list[list[str]] = field(default_factory=list)  # batches read but not applied yet


class Run:
    """One seeded run: the history, the consumers and every step, on the node's {model} keys."""

    def __init__(
        self, node: redis.Redis, keys: PartitionKeys, scripts: tuple[Script, Script], seed: int, apply: Apply
    ) -> None:
        self.node, self.keys, self.apply = node, keys, apply
        self.apply_script, self.trim_script = scripts
        self.rng = random.Random(seed)
        self.history: list[tuple[str, str]] = []
        self.exists = dict.fromkeys(USERS, False)
        self.ms = 1000
        self.applied_batches: list[list[str]] = []
        self.consumers = [Consumer(f"c{i}") for i in range(self.rng.randint(2, 4))]
        self.restarts = 0

    def append(self) -> None:
        user = self.rng.choice(USERS)
        if not self.exists[user]:
            kind = "create"
        else:
            kind = self.rng.choices(("read", "update", "delete"), weights=(5, 1, 2))[0]
        self.exists[user] = kind != "delete"
        # Explicit ids a few ms apart, so trimming can forget tombstones (it works at ms granularity).
        self.ms += self.rng.randint(1, 3)
        self.node.xadd(self.keys.events, {"user": user, "type": kind, "ts": str(self.ms)}, id=f"{self.ms}-0")
        self.history.append((user, kind))

    def _read(self, consumer: Consumer, start: str) -> None:
        reply = self.node.xreadgroup(GROUP, consumer.name, {self.keys.events: start}, count=self.rng.randint(1, 6))
        ids = [entry_id for _, entries in reply or () for entry_id, _ in entries]
        if ids:
            consumer.held.append(ids)

    def _reclaim(self, consumer: Consumer) -> None:
        start = self.rng.choice(["0-0", f"{max(1000, self.ms - self.rng.randint(0, 40))}-0"])
        _, entries, *_ = self.node.xautoclaim(
            self.keys.events, GROUP, consumer.name, min_idle_time=0, start_id=start, count=self.rng.randint(1, 8)
        )
        ids = [entry_id for entry_id, _ in entries]
        if ids:
            consumer.held.append(ids)

    def _take(self, consumer: Consumer) -> bool:
        """The aggregator's hot path: the script takes the next entries for the consumer and applies them."""
        count = self.rng.randint(1, 6)
        _, _, taken, _ = self.apply_script(keys=self.keys.apply_keys, args=[GROUP, ">", consumer.name, count])
        return int(taken) > 0

    def _apply_held(self, consumer: Consumer) -> None:
        batch = consumer.held.pop(self.rng.randrange(len(consumer.held)))  # not always the oldest: a stall
        self.apply(self.node, self.apply_script, self.keys, batch)
        self.applied_batches.append(batch)

    def _trim(self) -> None:
        self.trim_script(keys=self.keys.trim_keys, args=[GROUP, 600_000], client=self.node)

    def step(self) -> None:
        consumer = self.rng.choice(self.consumers)
        action = self.rng.choices(
            ("read", "apply", "take", "reclaim", "own", "die", "reapply", "trim"), weights=(6, 6, 6, 2, 1, 1, 1, 1)
        )[0]
        if action == "read":
            self._read(consumer, ">")
        elif action == "take":
            self._take(consumer)
        elif action == "apply" and consumer.held:
            self._apply_held(consumer)
        elif action == "reclaim":
            self._reclaim(consumer)
        elif action == "own":  # a consumer taking back its own pending entries, as after a lost reply
            self._read(consumer, "0")
        elif action == "die":  # what it held stays pending; it comes back under a new name
            self.restarts += 1
            self.consumers[self.consumers.index(consumer)] = Consumer(f"c{len(self.consumers)}r{self.restarts}")
        elif action == "reapply" and self.applied_batches:  # a retry of a batch whose reply was lost
            self.apply(self.node, self.apply_script, self.keys, self.rng.choice(self.applied_batches))
        elif action == "trim":
            self._trim()

    def drain(self) -> None:
        """What a healthy replica ends up doing: apply whatever is held, reclaim and read until nothing is left."""
        last = Consumer("drain")
        for consumer in self.consumers:
            while consumer.held:
                self._apply_held(consumer)
        while self.rng.random() < 0.5 and self._take(last):
            pass
        for _ in range(1000):
            _, entries, *_ = self.node.xautoclaim(
                self.keys.events, GROUP, last.name, min_idle_time=0, start_id="0-0", count=100
            )
            ids = [entry_id for entry_id, _ in entries]
            reply = self.node.xreadgroup(GROUP, last.name, {self.keys.events: ">"}, count=100)
            ids += [entry_id for _, got in reply or () for entry_id, _ in got]
            if not ids:
                return
            self.apply(self.node, self.apply_script, self.keys, ids)
        raise AssertionError("the drain did not finish")

    def play(self) -> str | None:
        """The whole run; returns what is wrong, or None."""
        self.node.delete(*self.keys.apply_keys)
        self.node.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
        events = self.rng.randint(4, 40)
        while len(self.history) < events:
            if self.rng.random() < 0.35:
                self.append()
            else:
                self.step()
        for _ in range(self.rng.randint(0, 30)):
            self.step()
        self.drain()
        self._trim()
        scores, totals = expected_statistics(self.history)
        expected_scores = {user: float(n) for user, n in scores.items()}
        expected_totals = {kind: str(n) for kind, n in totals.items()}
        _, reads, totals_key, *_ = self.keys.apply_keys
        got_scores = dict(self.node.zrange(reads, 0, -1, withscores=True))
        got_totals = self.node.hgetall(totals_key)
        pending = self.node.xpending(self.keys.events, GROUP)["pending"]
        if got_scores != expected_scores or got_totals != expected_totals or pending:
            return (
                f"history {self.history}: scores {got_scores} (expected {expected_scores}), "
                f"totals {got_totals} (expected {expected_totals}), {pending} pending"
            )
        return None


def run_many(url: str, seeds: Sequence[int], tag: str = "{model}", apply: Apply = apply_ids) -> dict[int, str]:
    """Every seed's run on the node at `url`, on keys under `tag`; returns the wrong ones by seed."""
    keys = PartitionKeys(tag)
    with redis.Redis.from_url(url, decode_responses=True) as node:
        scripts = (
            node.register_script(script_source(APPLY_SCRIPT)),
            node.register_script(script_source(TRIM_SCRIPT)),
        )
        wrong = {}
        for seed in seeds:
            problem = Run(node, keys, scripts, seed, apply).play()
            if problem:
                wrong[seed] = problem
        node.delete(*keys.apply_keys)
    return wrong


def run_parallel(url: str, seeds: Sequence[int], workers: int = 2) -> dict[int, str]:
    """The runs spread over processes (the client side is the slow part), each on a tag of its own."""
    shares = [seeds[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = pool.map(run_many, [url] * workers, shares, [f"{{model{i}}}" for i in range(workers)])
        return {seed: problem for result in results for seed, problem in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a standalone (non-cluster) node to use")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, help="replay this run only")
    options = parser.parse_args()
    seeds = [options.seed] if options.seed is not None else list(range(options.runs))
    wrong = run_parallel(options.url, seeds) if len(seeds) > 1 else run_many(options.url, seeds)
    for seed, problem in list(wrong.items())[:5]:
        print(f"seed {seed}: {problem}")
    print(f"{len(wrong)} wrong of {len(seeds)} runs")


if __name__ == "__main__":
    main()
