"""Idle and loaded CPU of each component, and its connections to the cluster, at several partition counts.

    .venv/bin/python -m bench.partitions [--partitions 16,256,4096] [--idle-s 60] [--load-s 6] [--out FILE]

For each count, a whole system of its own on free ports (production defaults, but the count and WARNING logs),
left until the aggregator is idle (every partition's wake flag armed and every partition's lag read once), then:

- idle: each process's CPU over `idle-s` seconds, as a share of one core (long enough to hold the idle aggregator's
  busier moments, about every 40 s at 4,096 partitions), and the connections each component's cluster user holds
  (CLIENT LIST on every node);
- loaded: wrk's REST mix (80% reads, 10% creates, 5% updates, 5% deletes) at 16 connections for `load-s`
  seconds: requests/s and CPU microseconds per request by process (the six nodes as one).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.accounting import CpuMeter
from bench.seeding import load_profiles
from bench.wrk_runner import run_wrk
from common.storage import acl, keys
from localdev.system import System, on_free_ports

PREFIX = "scale-user-"
USERS = 2000
PROCESSES = ("gateway", "profile_svc", "aggregator_svc", "reporting_svc")


def say(message: str) -> None:
    print(message, flush=True)


def _armed(system: System, partitions: int) -> int:
    client = system.cluster.client(decode_responses=True)
    try:
        return sum(client.get(keys.wake_key(partition)) == "1" for partition in range(partitions))
    finally:
        client.close()


def _pids(system: System, name: str) -> Callable[[], list[int]]:
    return lambda: [system.processes[name].pid]


def _connections(system: System) -> dict[str, int]:
    """Connections per component's cluster user, over every node."""
    users = {user: component for component, user in acl.USERS.items()}
    counts = dict.fromkeys(acl.USERS, 0)
    for index in range(len(system.cluster.ports)):
        for row in system.cluster.node(index).client_list():
            if row.get("user") in users:
                counts[users[row["user"]]] += 1
    return counts


def measure(work: Path, partitions: int, idle_s: int, load_s: int) -> dict[str, dict[str, float]]:
    settings = {"PROFILEMESH_PARTITIONS": str(partitions), "PROFILEMESH_LOG_LEVEL": "WARNING"}
    system = on_free_ports(work / f"p{partitions}", settings)
    try:
        system.start(timeout_s=180)
        started = time.monotonic()
        while _armed(system, partitions) < partitions and time.monotonic() - started < 300:
            time.sleep(1)
        say(f"{partitions} partitions: idle after {time.monotonic() - started:.0f} s")
        # The lag gauges' first reading of every partition (aggregator_svc/lag.py: 64 a second) is start-up too.
        time.sleep(5 + partitions / 64)
        groups = {name: _pids(system, name) for name in PROCESSES}
        groups["cluster"] = lambda: [p.pid for p in system.cluster.processes.values()]
        meter = CpuMeter(groups)
        before = meter.snapshot()
        time.sleep(idle_s)
        after = meter.snapshot()
        idle = {name: (after[name] - before[name]) / idle_s * 100 for name in before}
        connections = _connections(system)
        load_profiles(system.cluster.admin_url, PREFIX, 0, USERS, partitions)
        before = meter.snapshot()
        load = run_wrk(
            "mix",
            f"{partitions} partitions",
            system.gateway_url,
            "mix.lua",
            [PREFIX, str(USERS), f"p{partitions}"],
            16,
            load_s,
        )
        loaded = CpuMeter.per_request_us(before, meter.snapshot(), load.requests)
        say(
            f"{partitions} partitions: idle "
            + ", ".join(f"{k} {v:.2f}%" for k, v in idle.items())
            + f"; connections {connections}; mix {load.rps:,.0f} req/s, "
            + ", ".join(f"{k} {v:.0f} us" for k, v in loaded.items())
        )
        return {
            "idle": idle,
            "connections": {k: float(v) for k, v in connections.items()},
            "loaded": {**loaded, "rps": load.rps},
        }
    finally:
        system.stop()


def render(results: dict[int, dict[str, dict[str, float]]], idle_s: int, load_s: int) -> str:
    names = [*PROCESSES, "cluster"]
    lines = [
        "# Partitions: idle and loaded cost by partition count (bench/partitions.py)",
        "",
        f"Idle: CPU over {idle_s} s once the aggregator was idle, % of one core. Loaded: wrk's REST mix at 16"
        f" connections for {load_s} s, CPU us per request. Connections: each component's user, over the six nodes."
        " On a 2-core machine shared by everything.",
        "",
        "| partitions | "
        + " | ".join(f"idle {n} %" for n in names)
        + " | "
        + " | ".join(f"{c} conns" for c in acl.USERS)
        + " | mix req/s | "
        + " | ".join(f"mix {n} us" for n in names)
        + " |",
        "|" + "---:|" * (1 + 2 * len(names) + len(acl.USERS) + 1),
    ]
    for partitions, figures in results.items():
        cells = [f"{partitions:,}"]
        cells += [f"{figures['idle'][n]:.2f}" for n in names]
        cells += [f"{figures['connections'][c]:.0f}" for c in acl.USERS]
        cells += [f"{figures['loaded']['rps']:,.0f}"]
        cells += [f"{figures['loaded'][n]:.0f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", default="16,256,4096")
    parser.add_argument("--idle-s", type=int, default=60)
    parser.add_argument("--load-s", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="partitions-") as scratch:
        results = {
            int(p): measure(Path(scratch), int(p), options.idle_s, options.load_s)
            for p in options.partitions.split(",")
        }
    text = render(results, options.idle_s, options.load_s)
    print(text)
    if options.out:
        options.out.write_text(text)


if __name__ == "__main__":
    main()
