"""Scale-out: the capacity model's predictions (docs/capacity.md) checked at the shard counts this machine runs.

    .venv/bin/python -m bench.scale [--shards 1,2,3] [--load-s 10] [--connections 64] [--out FILE]

For each shard count S, a whole system of its own on free ports (bench/run.py's settings: production defaults,
16 partitions; WARNING logs) with S primaries and a replica of each, USERS profiles preloaded, a short warm-up,
then wrk's REST mix (80% reads, 10% creates, 5% updates, 5% deletes) at `connections` (64: the connections the
model's inputs were measured at) for `load-s` seconds, and a wait until the aggregator has applied the run's
events. Measured: requests/s; CPU microseconds per request of each service process and of each cluster node,
primaries and replicas apart; each node's commands/s (INFO stats total_commands_processed).

Then the checks, each against a tolerance (TOLERANCE: the machine is shared and has two cores):
(a) a service tier's CPU per request does not depend on S: the docs' input, and the figure at the first S;
(b) the cluster's CPU per request does not depend on S and divides evenly among the primaries (each 1/S);
(c) the shards the model's formula asks for the measured requests/s, against those the primaries' measured CPU
    asks for at the same 50% of a core each, and the busiest primary's share of a core: the model puts all of
    the cluster's CPU on primaries, so it is a bound (it holds if the measured figure is at most 25% above it).
A check that does not hold is a finding and is printed as one; the exit status is not 0 only if a run failed
(a system that did not start, wrk failing, or a request answered with an error).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.accounting import CpuMeter
from bench.aggregator_bench import remaining
from bench.run import BENCH_SETTINGS, PARTITIONS
from bench.seeding import load_profiles
from bench.wrk_runner import run_wrk
from common.storage import keys
from common.storage.nodes import key_slot
from localdev.system import System, on_free_ports

PREFIX = "scale-user-"
USERS = 2000
SERVICES = ("gateway", "profile_svc", "aggregator_svc", "reporting_svc")
SETTINGS = {**BENCH_SETTINGS, "PROFILEMESH_LOG_LEVEL": "WARNING"}
WARMUP_S = 2
SETTLE_MAX_S = 30.0
TOLERANCE = 0.25  # a measured figure within +-25% of its prediction holds

# What docs/capacity.md's model takes: CPU us per request of the REST mix at 64 connections, 3 primaries + 3
# replicas (the gateway's and profile_svc's from `make bench`, the aggregator's and the cluster's from this bench,
# with the top list's index).
DOCS_US = {"gateway": 121.0, "profile_svc": 88.0, "aggregator_svc": 36.0, "cluster": 119.0}
PRIMARY_BUDGET = 0.5  # of a core: the model's plan for each primary
# The model's formula, shards = N x 119 us / 0.5: all of a request's cluster CPU on the primary of its shard.
PER_SHARD_US = DOCS_US["cluster"]


def model_shards(rps: float) -> int:
    """The shards docs/capacity.md's formula asks for at `rps` requests/s of the mix, rounded up (at least one)."""
    return max(1, math.ceil(rps * PER_SHARD_US / 1e6 / PRIMARY_BUDGET))


def say(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Shard:
    primary: int  # node indexes into the cluster's ports
    replica: int
    slots: int
    partitions: int  # of PARTITIONS, whose keys (all hash-tagged by partition) live on this shard


@dataclass
class Measured:
    shards: list[Shard]
    rps: float = 0.0
    errors: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)  # per request: each service, each node ("node <i>")
    ops: dict[int, float] = field(default_factory=dict)  # node index -> commands/s
    batch: dict[int, float] = field(default_factory=dict)  # node index -> commands per read event

    def primaries_us(self) -> list[float]:
        return [self.cpu_us[f"node {s.primary}"] for s in self.shards]

    def replicas_us(self) -> list[float]:
        return [self.cpu_us[f"node {s.replica}"] for s in self.shards]

    @property
    def cluster_us(self) -> float:
        return sum(self.primaries_us()) + sum(self.replicas_us())


def topology(system: System) -> list[Shard]:
    """The shards as the cluster reports them, by first slot: who is primary, who follows it, what it holds."""
    lines = system.cluster.cluster_nodes()
    index = {f"{system.cluster.host(i)}:{port}": i for i, port in enumerate(system.cluster.ports)}
    tagged = [key_slot(keys.tag(p)) for p in range(PARTITIONS)]
    shards = []
    for line in sorted((n for n in lines if n.is_primary and n.slot_ranges), key=lambda n: n.slot_ranges[0][0]):
        follower = next(n for n in lines if n.primary_id == line.id)
        shards.append(
            Shard(
                primary=index[line.address],
                replica=index[follower.address],
                slots=sum(high - low + 1 for low, high in line.slot_ranges),
                partitions=sum(line.serves(slot) for slot in tagged),
            )
        )
    return shards


def counters(system: System) -> dict[int, tuple[int, int]]:
    """Each node's commands and read events (a read event: one batch of commands read from one connection)."""
    totals = {}
    for index in range(len(system.cluster.ports)):
        node = system.cluster.node(index)
        try:
            stats = node.info("stats")
            totals[index] = (int(stats["total_commands_processed"]), int(stats["total_reads_processed"]))
        finally:
            node.close()
    return totals


def settle(system: System) -> None:
    """Until the aggregator has applied every event so far: a run's CPU then includes its own events' aggregation."""
    client = system.cluster.client(decode_responses=True)
    group = system.env().get("PROFILEMESH_AGGREGATOR_GROUP", "aggregator")
    try:
        deadline = time.monotonic() + SETTLE_MAX_S
        while remaining(client, group, PARTITIONS) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()


def measure(work: Path, shards: int, load_s: int, connections: int) -> Measured:
    system = on_free_ports(work / f"s{shards}", SETTINGS, shards=shards)
    try:
        system.start(timeout_s=180)
        found = Measured(topology(system))
        if len(found.shards) != shards:
            raise RuntimeError(f"asked for {shards} shards, the cluster has {len(found.shards)}")
        load_profiles(system.cluster.admin_url, PREFIX, 0, USERS, PARTITIONS)
        run_wrk("warm-up", "", system.gateway_url, "mix.lua", [PREFIX, str(USERS), f"w{shards}"], 16, WARMUP_S)
        settle(system)
        groups = {name: (lambda n=name: [system.processes[n].pid]) for name in SERVICES}
        for i in range(len(system.cluster.ports)):
            groups[f"node {i}"] = lambda i=i: [system.cluster.processes[i].pid]
        meter = CpuMeter(groups)
        before, counted, started = meter.snapshot(), counters(system), time.monotonic()
        load = run_wrk(
            "mix",
            f"{shards} shards",
            system.gateway_url,
            "mix.lua",
            [PREFIX, str(USERS), f"s{shards}"],
            connections,
            load_s,
        )
        elapsed = time.monotonic() - started
        for i, (done, reads) in counters(system).items():
            found.ops[i] = (done - counted[i][0]) / elapsed
            found.batch[i] = (done - counted[i][0]) / max(1, reads - counted[i][1])
        settle(system)
        found.rps, found.errors = load.rps, load.errors
        found.cpu_us = CpuMeter.per_request_us(before, meter.snapshot(), load.requests)
        say(
            f"{shards} shards: {load.rps:,.0f} req/s, {load.errors} errors; "
            + ", ".join(f"{k} {v:.0f} us" for k, v in found.cpu_us.items())
        )
        return found
    finally:
        system.stop()


@dataclass
class Check:
    name: str
    predicted: float
    measured: float
    unit: str = "us"
    bound: bool = False  # the prediction is an upper bound: any measured figure below it holds

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted else math.inf

    @property
    def holds(self) -> bool:
        return self.ratio <= 1 + TOLERANCE if self.bound else abs(self.ratio - 1) <= TOLERANCE


def checks(results: dict[int, Measured]) -> list[Check]:
    """(a), (b) and (c) of the module's docstring, each for every shard count."""
    first = next(iter(results))
    tiers: list[Check] = []
    cluster: list[Check] = []
    shards_needed: list[Check] = []
    for shards, m in results.items():
        s = f"S={shards}"
        for tier in ("gateway", "profile_svc", "aggregator_svc"):
            tiers.append(Check(f"(a) {tier} us/request, {s} vs docs", DOCS_US[tier], m.cpu_us[tier]))
            if shards != first:
                tiers.append(
                    Check(f"(a) {tier} us/request, {s} vs S={first}", results[first].cpu_us[tier], m.cpu_us[tier])
                )
        cluster.append(Check(f"(b) cluster us/request, {s} vs docs", DOCS_US["cluster"], m.cluster_us))
        if shards != first:
            cluster.append(Check(f"(b) cluster us/request, {s} vs S={first}", results[first].cluster_us, m.cluster_us))
        primaries = m.primaries_us()
        total = sum(primaries)
        if shards > 1:
            for k, (us, shard) in enumerate(zip(primaries, m.shards, strict=True), 1):
                cluster.append(Check(f"(b) primary {k}'s share of the primaries' CPU, {s}", 1 / shards, us / total, ""))
                if shard.partitions * shards != PARTITIONS:  # keys go by partition: what the shard holds predicts too
                    share = shard.partitions / PARTITIONS
                    name = f"(b) primary {k}'s share, {s}, by its {shard.partitions} of {PARTITIONS} partitions"
                    cluster.append(Check(name, share, us / total, ""))
            cluster.append(Check(f"(b) primaries' CPU max/min, {s}", 1.0, max(primaries) / min(primaries), ""))
        model = m.rps * PER_SHARD_US / 1e6 / PRIMARY_BUDGET
        from_cpu = m.rps * total / 1e6 / PRIMARY_BUDGET  # each primary at the same 50%, the load divided evenly
        name = f"(c) shards for {m.rps:,.0f} req/s, {s}: model vs primaries' CPU"
        shards_needed.append(Check(name, model, from_cpu, "shards", bound=True))
        busiest = max(primaries) * m.rps / 1e6
        name = f"(c) busiest primary's share of a core, {s}: model vs measured"
        shards_needed.append(Check(name, m.rps * PER_SHARD_US / 1e6 / shards, busiest, "core", bound=True))
    return [*tiers, *cluster, *shards_needed]


def _cell(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value:.0f} us"
    if unit == "shards":
        return f"{value:.3f}"
    if unit == "core":
        return f"{value:.1%}"
    return f"{value:.2f}"


def render(results: dict[int, Measured], load_s: int, connections: int, loadavg: tuple[str, str]) -> str:
    lines = [
        f"# Scale-out: the capacity model at {', '.join(map(str, results))} shards (bench/scale.py)",
        "",
        f"wrk's REST mix at {connections} connections for {load_s} s on a system of its own per shard count"
        f" (S primaries + S replicas, {PARTITIONS} partitions, {USERS:,} preloaded profiles, bench/run.py's settings)."
        " CPU in us per request; each primary and replica apart. On a 2-core machine shared with other runs:"
        f" load average before {loadavg[0]}, after {loadavg[1]} (/proc/loadavg, 1/5/15 min).",
        "",
        "## Measured",
        "",
        "| shards | req/s | errors | " + " | ".join(SERVICES) + " | cluster | primaries | replicas | replica share |",
        "|" + "---:|" * (7 + len(SERVICES)),
    ]
    for shards, m in results.items():
        primaries, replicas = sum(m.primaries_us()), sum(m.replicas_us())
        cells = [str(shards), f"{m.rps:,.0f}", str(m.errors), *(f"{m.cpu_us[n]:.0f}" for n in SERVICES)]
        cells += [f"{m.cluster_us:.0f}", f"{primaries:.0f}", f"{replicas:.0f}", f"{replicas / m.cluster_us:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each shard: its primary's and replica's CPU us per request, commands/s and commands per read event (how many"
        " commands one read of a connection brings: the batching), and the partitions it holds"
        f" (of {PARTITIONS}; every key is hash-tagged by partition, so a shard's share of the keys is its share of"
        " the partitions, not of the slots).",
        "",
        "| shards | shard | slots | partitions | primary us | replica us | primary cmd/s | replica cmd/s"
        " | primary cmd/read |",
        "|" + "---:|" * 9,
    ]
    for shards, m in results.items():
        for k, s in enumerate(m.shards, 1):
            cells = [str(shards), str(k), f"{s.slots:,}", str(s.partitions)]
            cells += [f"{m.cpu_us[f'node {s.primary}']:.0f}", f"{m.cpu_us[f'node {s.replica}']:.0f}"]
            cells += [f"{m.ops[s.primary]:,.0f}", f"{m.ops[s.replica]:,.0f}", f"{m.batch[s.primary]:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    found = checks(results)
    lines += [
        "",
        f"## Checks (hold within +-{TOLERANCE:.0%} of the prediction; (c)'s, bounds, up to {TOLERANCE:.0%} above it)",
        "",
        "| check | predicted | measured | ratio | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for c in found:
        verdict = "holds" if c.holds else "**does not hold**"
        lines.append(
            f"| {c.name} | {_cell(c.predicted, c.unit)} | {_cell(c.measured, c.unit)} | {c.ratio:.2f} | {verdict} |"
        )
    lines += [
        "",
        "(c) The S in use against the shards the model asks for, and the busiest processes (share of a core):",
        "",
    ]
    for shards, m in results.items():
        use = {name: m.cpu_us[name] * m.rps / 1e6 for name in m.cpu_us}
        primary = max(use[f"node {s.primary}"] for s in m.shards)
        top = sorted(SERVICES, key=lambda name: -use[name])[:2]
        lines.append(
            f"- S={shards}: the model asks for {model_shards(m.rps)} at {m.rps:,.0f} req/s; busiest primary"
            f" {primary:.0%} (planned at most {PRIMARY_BUDGET:.0%}), {top[0]} {use[top[0]]:.0%}, {top[1]} {use[top[1]]:.0%}."
        )
    lines += [
        "",
        f"On {os.cpu_count()} cores shared by every process the services, not the cluster, limit the load: these runs"
        " check the model's per-request costs and how they divide, not a shard's capacity.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="1,2,3")
    parser.add_argument("--load-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
        results = {
            int(s): measure(Path(scratch), int(s), options.load_s, options.connections)
            for s in options.shards.split(",")
        }
    after = Path("/proc/loadavg").read_text().split()[:3]
    text = render(results, options.load_s, options.connections, (" ".join(before), " ".join(after)))
    print(text)
    if options.out:
        options.out.write_text(text)
    failed = [shards for shards, m in results.items() if m.errors]
    if failed:  # a check that does not hold is a finding; a request that failed is a failed run
        sys.exit(f"requests failed at {failed} shards: see the table's errors column")


if __name__ == "__main__":
    main()
