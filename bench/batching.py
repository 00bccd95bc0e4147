"""A/B of the gateway's read batching: REST reads with PROFILEMESH_GATEWAY_BATCH=off and =on, alternated.

    .venv/bin/python -m bench.batching [--rounds 3] [--seconds 4]

One system; only the gateway restarts between modes. For each mode and concurrency: requests/s, p50/p99
(wrk) and CPU microseconds per request by process, cluster nodes included, wrk shown apart and excluded
from the system's total. Short runs on a shared machine: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.accounting import CpuMeter
from bench.run import BENCH_SETTINGS, PARTITIONS, READ_PREFIX
from bench.seeding import load_profiles
from bench.wrk_runner import run_wrk
from localdev.system import System, on_free_ports

USERS = 1000
CONCURRENCIES = (1, 16, 64)
MODES = ("off", "on")


def meter(system: System) -> CpuMeter:
    def process(name: str):  # type: ignore[no-untyped-def]
        return lambda: [system.processes[name].pid] if name in system.processes else []

    groups = {name: process(name) for name in ("gateway", "profile_svc", "aggregator_svc", "reporting_svc")}
    groups["cluster (6 nodes)"] = lambda: [p.pid for p in system.cluster.processes.values()]
    return CpuMeter(groups)


def restart_gateway(system: System, mode: str) -> None:
    system.stop_process("gateway")
    system.start_process("gateway", "gateway", PROFILEMESH_GATEWAY_BATCH=mode)
    system.wait_healthy(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    options = parser.parse_args()
    system = on_free_ports(Path(tempfile.mkdtemp(prefix="profilemesh-batching-")), BENCH_SETTINGS)
    rows: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    try:
        system.start()
        load_profiles(system.cluster.url, READ_PREFIX, 0, USERS, PARTITIONS)
        cpu = meter(system)
        for round_ in range(options.rounds):
            for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
                restart_gateway(system, mode)
                run_wrk("warm-up", "", system.gateway_url, "reads.lua", [READ_PREFIX, str(USERS)], 16, 1)
                for concurrency in CONCURRENCIES:
                    before = cpu.snapshot()
                    result = run_wrk(
                        "REST reads", mode, system.gateway_url, "reads.lua", [READ_PREFIX, str(USERS)],
                        concurrency, options.seconds,
                    )  # fmt: skip
                    usage = CpuMeter.per_request_us(before, cpu.snapshot(), result.requests)
                    row = {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms, "errors": result.errors}
                    row |= {f"µs {name}": value for name, value in usage.items()}
                    row["µs system"] = sum(usage.values())
                    row["µs wrk (excluded)"] = result.generator_cpu * result.duration_s / max(result.requests, 1) * 1e6
                    row["load"] = os.getloadavg()[0]
                    rows[(mode, concurrency)].append(row)
                    print(f"round {round_ + 1} batch={mode} c={concurrency}: " + ", ".join(
                        f"{k} {v:.1f}" for k, v in row.items()), flush=True)  # fmt: skip
    finally:
        system.stop()
    print("\nmedians over rounds (batch=off | batch=on):")
    for concurrency in CONCURRENCIES:
        off, on = rows[("off", concurrency)], rows[("on", concurrency)]
        for key in off[0]:
            print(
                f"c={concurrency:<3} {key:<28} {statistics.median(r[key] for r in off):>10.1f} | "
                f"{statistics.median(r[key] for r in on):>10.1f}"
            )


if __name__ == "__main__":
    main()
