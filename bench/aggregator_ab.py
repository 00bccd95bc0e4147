"""A/B of the aggregator alone under REST reads: the aggregator as of a base revision against this tree's.

    .venv/bin/python -m bench.aggregator_ab [--base REV] [--rounds 3] [--seconds 8] [--env NAME=VALUE ...]

One system (this tree's services, gateway batching on); only the aggregator restarts between modes: the base
one runs from `git archive REV` (default: the merge base with main), the other from this tree, alternated
round by round. Each run drives wrk (64 connections) at GET /profile/<user> and reports requests/s, the
events the statistics gained (every read appends one), the aggregator's batches, and CPU microseconds by
process group: per request for each group, and per applied event for the aggregator. wrk is excluded.
Then the read-to-visible lag (p50, p99) as `make bench` measures it, under 1,000 gRPC reads/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from redis.cluster import RedisCluster

from bench.accounting import CpuMeter
from bench.lag import measure_lag
from bench.observability import base_revision, export_base
from bench.run import BENCH_SETTINGS, PARTITIONS, READ_PREFIX
from bench.seeding import load_profiles
from bench.wrk_runner import run_wrk
from common.storage import keys
from localdev.system import System, on_free_ports

ROOT = Path(__file__).resolve().parent.parent
USERS = 1000
CONCURRENCY = 64
MODES = ("base", "this tree")
GROUPS = ("gateway", "profile_svc", "aggregator_svc", "reporting_svc")
# Read-to-visible lag (bench/lag.py) after each load run, as `make bench` measures it: probes over a steady load.
LAG_PROBES = 300
LAG_RATE = 1000.0


def applied_reads(client: RedisCluster) -> int:
    """Read events counted into the statistics so far, over every partition."""
    return sum(int(client.hget(keys.totals_key(p), "read") or 0) for p in range(PARTITIONS))


def aggregator_batches(system: System) -> float:
    """The aggregator's own count of applied batches (its Prometheus counter)."""
    with urllib.request.urlopen(system.metrics_url("aggregator_svc"), timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("profilemesh_aggregator_batches_total "):
                return float(line.split()[1])
    return 0.0


def wait_caught_up(client: RedisCluster, expected: int, timeout_s: float = 30) -> float:
    """Seconds until the statistics hold `expected` reads (the aggregator's lag after the load stops)."""
    started = time.monotonic()
    while applied_reads(client) < expected and time.monotonic() - started < timeout_s:
        time.sleep(0.01)
    return time.monotonic() - started


def load_base_functions(system: System, base: Path) -> None:
    """The base aggregator calls its own version's functions, which this tree's system did not load:
    `profilemesh cluster migrate` from the base tree loads them beside this tree's (each version's names differ)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{base}{os.pathsep}{base / 'gen'}",
        "PROFILEMESH_REDIS_URL": system.cluster.admin_url,
    }
    subprocess.run([sys.executable, "-m", "profilemesh_cli", "cluster", "migrate"], cwd=base, env=env, check=True)


def start_aggregator(system: System, mode: str, base: Path, env: dict[str, str]) -> None:
    system.stop_process("aggregator_svc")
    here = Path.cwd()
    if mode == "base":  # `python -m` looks in its working directory first: the base tree's aggregator starts
        os.chdir(base)
        os.environ["PYTHONPATH"] = f"{base}{os.pathsep}{base / 'gen'}"
    try:
        system.start_process("aggregator_svc", "aggregator_svc", **env)
    finally:
        os.chdir(here)
        os.environ.pop("PYTHONPATH", None)
    system.wait_healthy(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="revision of the base aggregator (default: merge base with main)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for this tree's aggregator only")
    parser.add_argument("--base-env", action="append", default=[], help="NAME=VALUE for the base aggregator only")
    options = parser.parse_args()
    rev = base_revision(options.base)
    tree_env = dict(item.split("=", 1) for item in options.env)
    base_env = dict(item.split("=", 1) for item in options.base_env)
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="bench-aggregator-ab-") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        export_base(rev, base)
        system = on_free_ports(Path(tmp) / "system", BENCH_SETTINGS)
        try:
            system.start()
            load_base_functions(system, base)
            load_profiles(system.cluster.admin_url, READ_PREFIX, 0, USERS, PARTITIONS)
            client = RedisCluster.from_url(system.cluster.admin_url)
            groups = {name: (lambda n=name: [system.processes[n].pid]) for name in GROUPS}
            cpu = CpuMeter({**groups, "cluster (6 nodes)": lambda: [p.pid for p in system.cluster.processes.values()]})
            for round_ in range(options.rounds):
                for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                    start_aggregator(system, mode, base, base_env if mode == "base" else tree_env)
                    run_wrk("warm-up", mode, system.gateway_url, "reads.lua", [READ_PREFIX, str(USERS)], 16, 2)
                    wait_caught_up(client, applied_reads(client) + 1, 2)
                    events_before, batches_before = applied_reads(client), aggregator_batches(system)
                    before = cpu.snapshot()
                    result = run_wrk(
                        "REST reads", mode, system.gateway_url, "reads.lua", [READ_PREFIX, str(USERS)],
                        CONCURRENCY, options.seconds,
                    )  # fmt: skip
                    after = cpu.snapshot()
                    events = applied_reads(client) - events_before
                    batches = aggregator_batches(system) - batches_before
                    usage = CpuMeter.per_request_us(before, after, result.requests)
                    aggregator_s = after["aggregator_svc"] - before["aggregator_svc"]
                    row = {"rps": result.rps, "p50 ms": result.p50_ms, "p99 ms": result.p99_ms}
                    row |= {f"µs/req {name}": value for name, value in usage.items()}
                    row["µs/req system"] = sum(usage.values())
                    row["aggregator µs/event"] = aggregator_s / max(events, 1) * 1e6
                    row["events/batch"] = events / max(batches, 1)
                    lag = asyncio.run(
                        measure_lag(
                            f"127.0.0.1:{system.profile_port}",
                            f"127.0.0.1:{system.reporting_port}",
                            probes=LAG_PROBES,
                            background_rate=LAG_RATE,
                            max_seconds=options.seconds,
                        )
                    )
                    row["lag p50 ms"], row["lag p99 ms"] = lag["median_ms"], lag["p99_ms"]
                    row["load"] = os.getloadavg()[0]
                    rows[mode].append(row)
                    print(
                        f"round {round_ + 1} {mode}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True
                    )
            client.close()
        finally:
            system.stop()
    print(
        f"\nmedians [min–max] over {options.rounds} rounds (base = {rev[:12]} {base_env or ''} | this tree {tree_env or ''}):"
    )
    for key in rows[MODES[0]][0]:
        cells = []
        for mode in MODES:
            values = [r[key] for r in rows[mode]]
            cells.append(f"{statistics.median(values):>9.1f} [{min(values):.1f}–{max(values):.1f}]")
        print(f"{key:<28} " + " | ".join(cells))


if __name__ == "__main__":
    main()
