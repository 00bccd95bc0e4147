"""A/B of the write path: this tree's services against a base revision's, under creates, the REST mix and reads.

    .venv/bin/python -m bench.writes_ab --base REV [--rounds 3] [--seconds 6] [--out FILE]

Variants, alternated round by round on fresh systems on free ports so background noise hits each alike:

- base: the services as of REV (from `git archive`, with code generated from its own protos);
- this tree: group commit in profile_svc and the gateway's write coalescing (PROFILEMESH_GATEWAY_BATCH=on);
- this tree, batch off: group commit alone (every REST change its own call, as every read).

In each system, wrk runs creates only (creates.lua), the REST mix (mix.lua: 80% reads, 10% creates, 5% updates,
5% deletes) and reads only at 64 connections, then creates and reads at 1 connection for latency. Reported per
scenario: requests/s, p50/p99, CPU microseconds per request by process group (the cluster's nodes one group,
wrk excluded) and the WAITs the cluster ran per change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.accounting import CpuMeter
from bench.observability import base_revision, export_base
from bench.seeding import load_profiles
from bench.wrk_runner import run_wrk
from localdev.system import System, on_free_ports

PREFIX = "ab-user-"
USERS = 2000
PARTITIONS = 16
GROUPS = ("gateway", "profile_svc", "aggregator_svc", "cluster")
VARIANTS = ("base", "this tree", "this tree, batch off")
# (name, wrk script, connections); creates and the mix make users named after the run.
SCENARIOS = (
    ("creates c=64", "creates.lua", 64),
    ("mix c=64", "mix.lua", 64),
    ("reads c=64", "reads.lua", 64),
    ("creates c=1", "creates.lua", 1),
    ("reads c=1", "reads.lua", 1),
)
SETTINGS = {"PROFILEMESH_PARTITIONS": str(PARTITIONS), "PROFILEMESH_LOG_LEVEL": "WARNING"}

Figures = dict[str, float]


def say(message: str) -> None:
    print(message, flush=True)


def waits(system: System) -> int:
    """WAIT and WAITAOF commands the cluster's nodes have run (INFO commandstats)."""
    total = 0
    for index in range(len(system.cluster.ports)):
        stats = system.cluster.node(index).info("commandstats")
        total += sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("wait", "waitaof"))
    return total


def start(variant: str, work: Path, base: Path, round_: int) -> System:
    settings = dict(SETTINGS, PROFILEMESH_GATEWAY_BATCH="off" if variant.endswith("batch off") else "on")
    system = on_free_ports(work / f"{variant.replace(' ', '-').replace(',', '')}-{round_}", settings)
    here = Path.cwd()
    if variant == "base":
        # The base's services log in as the admin: the cluster's users and their rights are this tree's.
        system.cluster.user_env = lambda component: {"PROFILEMESH_REDIS_URL": system.cluster.admin_url}  # type: ignore[method-assign]  # a bench-only override
        os.chdir(base)  # `python -m service` looks in its working directory first: the old tree's services
        os.environ["PYTHONPATH"] = f"{base}{os.pathsep}{base / 'gen'}"
    try:
        system.start()
    except BaseException:
        system.stop()
        raise
    finally:
        os.chdir(here)
        os.environ.pop("PYTHONPATH", None)
    return system


def measure(system: System, variant: str, round_: int, seconds: int) -> dict[str, Figures]:
    load_profiles(system.cluster.admin_url, PREFIX, 0, USERS, PARTITIONS)
    run_wrk("warm-up", variant, system.gateway_url, "reads.lua", [PREFIX, str(USERS)], 16, 2)
    meter = CpuMeter(
        {
            **{name: (lambda n=name: [system.processes[n].pid]) for name in GROUPS[:3]},
            "cluster": lambda: [p.pid for p in system.cluster.processes.values()],
        }
    )
    results: dict[str, Figures] = {}
    for name, script, connections in SCENARIOS:
        args = [PREFIX, str(USERS)] + ([f"ab{round_}{variant[:4]}{connections}"] if script != "reads.lua" else [])
        before, waits_before = meter.snapshot(), waits(system)
        load = run_wrk(name, variant, system.gateway_url, script, args, connections, seconds)
        cpu = CpuMeter.per_request_us(before, meter.snapshot(), load.requests)
        changes = load.requests if script == "creates.lua" else load.requests * 0.2 if script == "mix.lua" else 0
        results[name] = {
            "rps": load.rps,
            "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms,
            "errors": float(load.errors),
            **cpu,
            "total_us": sum(cpu.values()),
            "waits_per_change": (waits(system) - waits_before) / changes if changes else 0.0,
        }
        say(
            f"round {round_ + 1} {variant} {name}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, "
            + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items())
            + f", {results[name]['waits_per_change']:.2f} waits/change"
        )
    return results


def render(runs: dict[str, list[dict[str, Figures]]], base_rev: str, seconds: int) -> str:
    def median(variant: str, scenario: str, figure: str) -> float:
        return statistics.median(run[scenario][figure] for run in runs[variant])

    lines = [
        "# The write path A/B (bench/writes_ab.py)",
        "",
        f"wrk for {seconds} s per scenario, {len(runs['base'])} rounds, variants alternated on fresh systems; "
        f"base = the services at {base_rev}. Medians of rounds. CPU: microseconds per request by process group "
        "(wrk excluded), on a 2-core machine.",
        "",
        "| scenario | variant | req/s | p50 ms | p99 ms | "
        + " | ".join(f"{g} us" for g in GROUPS)
        + " | total us | waits/change |",
        "|---|---|---:|---:|---:|" + "---:|" * (len(GROUPS) + 2),
    ]
    for scenario, _, _ in SCENARIOS:
        for variant in runs:
            row: Callable[[str], float] = lambda f, v=variant, s=scenario: median(v, s, f)  # noqa: E731
            lines.append(
                f"| {scenario} | {variant} | {row('rps'):,.0f} | {row('p50_ms'):.2f} | {row('p99_ms'):.1f} | "
                + " | ".join(f"{row(g):.0f}" for g in GROUPS)
                + f" | {row('total_us'):.0f} | {row('waits_per_change'):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    base_rev = base_revision(options.base)
    runs: dict[str, list[dict[str, Figures]]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="writes-ab-") as scratch:
        work = Path(scratch)
        base = work / "base"
        base.mkdir()
        export_base(base_rev, base)
        for round_ in range(options.rounds):
            for variant in VARIANTS:
                system = start(variant, work, base, round_)
                try:
                    runs[variant].append(measure(system, variant, round_, options.seconds))
                finally:
                    system.stop()
    text = render(runs, base_rev, options.seconds)
    print(text)
    if options.out:
        options.out.write_text(text)


if __name__ == "__main__":
    main()
