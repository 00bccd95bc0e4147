"""`make bench`: profilemesh side by side with the seed's design, on a fresh local cluster.

`python -m bench.run [--smoke] [--out FILE] [--no-profile]` starts a cluster, the whole system
and the baseline on free ports, runs every scenario, prints the report and writes it
(default bench/results.md), then stops everything it started. --smoke is a tiny run for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil
import redis
from redis.cluster import RedisCluster

from bench import profiling
from bench.accounting import CpuMeter, rss_mb
from bench.aggregator_bench import drain, remaining
from bench.baseline.server import BaselineServer
from bench.growth import grow
from bench.lag import measure_lag
from bench.report import Report, render
from bench.rounds import BASELINE, CLUSTER, Run, split_by_system
from bench.sampling import PeakRss
from bench.scenarios import BASELINE_REST, PROFILEMESH_REST, SCENARIOS, Targets, run_scenario
from bench.seeding import MIX, load_baseline_profiles, load_profiles
from bench.sizes import FULL, SMOKE, Scale
from bench.streams import StreamSampler
from bench.wrk_runner import run_wrk, wrk_binary
from common.runtime.config import Settings
from localdev.ports import free_ports
from localdev.system import System, on_free_ports

PARTITIONS = 16
READ_PREFIX = "r"
GROWTH_PREFIX = "g"
BACKLOG_USERS = 10_000
DEFAULT_OUT = Path(__file__).parent / "results.md"
SETTLE_MAX_S = 30.0  # after a run, the longest wait for the aggregator to catch up before reading CPU
NOTES = [
    "The baseline runs no aggregator (the seed's is a separate service), so its CPU per request has no "
    "statistics work in it; profilemesh's aggregator keeps applying the read events on the same two cores.",
    "A run's CPU is read once the aggregator has applied every event so far (the wait is short, the processes "
    "mostly idle in it), so profilemesh's rows include the aggregation of their own events and no other run's.",
    "gunicorn's sync workers close the connection after every response, so wrk reconnects for each baseline "
    "request, as clients of such a deployment do.",
    "Load is closed-loop (wrk, bench/pyload.py): when the server stalls, fewer requests are sent, so the "
    "tail percentiles understate what an open-loop client would see.",
]
# Production defaults except what a benchmark must pin: the partition count and a short drain on stop.
BENCH_SETTINGS = {
    "PROFILEMESH_PARTITIONS": str(PARTITIONS),
    "PROFILEMESH_SHUTDOWN_GRACE_S": "5",
    "PROFILEMESH_LOG_LEVEL": "INFO",
}


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info(cluster_url: str) -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    node = redis.Redis.from_url(cluster_url)
    info = node.info("server")
    node.close()
    server = f"valkey {info['valkey_version']}" if "valkey_version" in info else f"redis {info['redis_version']}"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(),
        "server": server + " cluster, 3 primaries + 3 replicas, appendonly everysec",
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "config": service_config(),
    }


def service_config() -> str:
    """The settings that shape the figures: what the bench sets, and the defaults it leaves."""
    defaults = Settings()
    shown = ("durability", "redis_max_concurrency", "max_in_flight", "aggregator_batch", "aggregator_maintenance_s")
    kept = [f"{name}={getattr(defaults, name)}" for name in shown if hasattr(defaults, name)]
    return ", ".join([*(f"{k}={v}" for k, v in BENCH_SETTINGS.items()), *kept])


def cpu_groups(system: System, baseline: BaselineServer) -> CpuMeter:
    def service(name: str):
        return lambda: [system.processes[name].pid] if name in system.processes else []

    groups = {name: service(name) for name in ("gateway", "profile_svc", "aggregator_svc", "reporting_svc")}
    groups[CLUSTER] = lambda: [p.pid for p in system.cluster.processes.values()]
    groups[BASELINE] = baseline.pids
    return CpuMeter(groups)


def settle(client: RedisCluster, group: str) -> bool:
    """Wait until the aggregator has applied every event so far, so that a run's CPU includes the
    aggregation of its own events and none of the previous run's; False if it took over SETTLE_MAX_S."""
    deadline = time.monotonic() + SETTLE_MAX_S
    while remaining(client, group, PARTITIONS):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def request_phase(
    system: System, baseline: BaselineServer, targets: Targets, scale: Scale, report: Report, work: Path
) -> None:
    """Every request scenario at every concurrency, once per round, systems interleaved so background noise
    hits both; CPU per request by process is recorded for every run."""
    if scale.warmup_s >= 1:
        for url in (targets.gateway_url, targets.baseline_url):
            await asyncio.to_thread(
                run_wrk, "warm-up", "", url, "reads.lua", [READ_PREFIX, str(targets.users)], 16, int(scale.warmup_s)
            )
    meter, run_id = cpu_groups(system, baseline), uuid.uuid4().hex[:6]
    group = system.env().get("PROFILEMESH_AGGREGATOR_GROUP", "aggregator")
    baseline_rss = 0.0
    with StreamSampler(system.cluster.admin_url, PARTITIONS) as streams:
        for round_ in range(scale.rounds):
            for concurrency in scale.concurrencies:
                for scenario in SCENARIOS:
                    before: dict[str, float] = {}
                    result = await asyncio.to_thread(
                        run_scenario,
                        scenario,
                        concurrency,
                        targets,
                        scale,
                        f"{run_id}r{round_}",
                        lambda before=before: before.update(meter.snapshot()),
                    )
                    waited = time.monotonic()
                    if not await asyncio.to_thread(settle, streams.client, group):
                        report.notes.append(
                            f"round {round_ + 1}, {scenario.name} / {scenario.system} c={concurrency}: the "
                            f"aggregator had not caught up {SETTLE_MAX_S:.0f} s after the run; its rest counts "
                            "in the next run"
                        )
                    waited = time.monotonic() - waited
                    usage = CpuMeter.per_request_us(before, meter.snapshot(), result.requests)
                    report.runs.append(Run(round_, result, *split_by_system(usage, scenario.target == "baseline")))
                    if scenario.target == "baseline":
                        baseline_rss = max(baseline_rss, rss_mb(baseline.pids()))
                    say(
                        f"round {round_ + 1}/{scale.rounds} {result.scenario} / {result.system} c={concurrency}: "
                        f"{result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, {result.errors} errors "
                        f"(aggregator caught up in {waited:.2f} s)"
                    )
        if scale.profile_s:
            await profile_services(system, baseline, targets, scale, report, work)
    report.streams = streams.summary()
    report.rss_mb["baseline (gunicorn master + workers)"] = baseline_rss


async def profile_services(
    system: System, baseline: BaselineServer, targets: Targets, scale: Scale, report: Report, work: Path
) -> None:
    """py-spy during extra c=64 REST read runs: the gateway, profile_svc and the aggregator, then one
    of the baseline's gunicorn workers."""
    top = max(scale.concurrencies)
    runs = [
        (
            targets.gateway_url,
            PROFILEMESH_REST,
            {name: system.processes[name].pid for name in ("gateway", "profile_svc", "aggregator_svc")},
        ),
        (targets.baseline_url, BASELINE_REST, {"baseline (one gunicorn worker)": baseline.pids()[-1]}),
    ]
    for url, system_name, pids in runs:
        spies = {
            name: (profiling.record(pid, scale.profile_s, work / f"{pid}.pyspy"), work / f"{pid}.pyspy")
            for name, pid in pids.items()
        }
        await asyncio.to_thread(
            run_wrk,
            "profiling run",
            system_name,
            url,
            "reads.lua",
            [READ_PREFIX, str(targets.users)],
            top,
            scale.profile_s + 1,
        )
        for name, (spy, out) in spies.items():
            await asyncio.to_thread(spy.wait)
            if spy.returncode == 0 and out.exists():
                report.profiles[f"{name}, REST reads at c={top}"] = profiling.summarise(out, top=12)
            else:
                report.notes.append(f"py-spy could not record {name} (exit {spy.returncode}); no profile for it")


async def lag_phase(system: System, scale: Scale, report: Report) -> None:
    lag = await measure_lag(
        f"127.0.0.1:{system.profile_port}",
        f"127.0.0.1:{system.reporting_port}",
        probes=scale.lag_probes,
        background_rate=scale.lag_background_rate,
        max_seconds=scale.lag_max_s,
    )
    report.lag = {**lag, "rate": scale.lag_background_rate}
    say(f"lag p50 {lag['median_ms']:.1f} ms, p99 {lag['p99_ms']:.1f} ms")


def drain_phase(system: System, scale: Scale, report: Report, work: Path) -> None:
    group = system.env().get("PROFILEMESH_AGGREGATOR_GROUP", "aggregator")
    spies: list = []

    def attach(pids: list[int]) -> None:
        spies.append(profiling.record(pids[0], scale.profile_s, work / "aggregator-drain.pyspy"))

    # The REST mix first (the target's figure), then reads only (no delete path), then two replicas.
    for replicas, mix in ((1, MIX), (1, {"read": 100}), (2, MIX)):
        profile = replicas == 1 and mix is MIX and scale.profile_s
        result = drain(
            system,
            replicas,
            scale.backlog,
            BACKLOG_USERS,
            PARTITIONS,
            group,
            scale.drain_timeout_s,
            on_start=attach if profile else None,
            mix=mix,
        )
        report.drains.append(result)
        say(f"aggregator x{replicas} ({result.mix}): {result.events_per_s:,.0f} events/s over {result.backlog:,}")
    for spy in spies:
        spy.wait()
        if spy.returncode == 0:
            report.profiles["aggregator_svc, draining the backlog (1 replica)"] = profiling.summarise(
                work / "aggregator-drain.pyspy", top=12
            )


def growth_phase(system: System, targets: Targets, scale: Scale, report: Report) -> None:
    have = 0
    for size in scale.growth_sizes:

        def read(count: int):
            return run_wrk(
                "growth reads",
                PROFILEMESH_REST,
                targets.gateway_url,
                "reads.lua",
                [GROWTH_PREFIX, str(count)],
                scale.growth_read_concurrency,
                scale.load_s,
            )

        result = grow(system.cluster.admin_url, GROWTH_PREFIX, have, size, PARTITIONS, read)
        report.growth.append(result)
        have = size
        say(f"growth {size:,}: {result.bytes_per_profile:.0f} B/profile, reads p99 {result.read.p99_ms:.1f} ms")


async def run(scale: Scale, out: Path, title: str) -> Report:
    wrk_binary()  # fail before starting anything if the generator is missing
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="profilemesh-bench-"))
    system = on_free_ports(work, BENCH_SETTINGS)
    baseline = BaselineServer(system.cluster.admin_url, free_ports(1)[0], work / "logs" / "baseline.log")
    succeeded = False
    try:
        say(f"starting a cluster, the services and the baseline (logs in {work / 'logs'})")
        await asyncio.to_thread(system.start)
        await asyncio.to_thread(baseline.start)
        report = Report(
            title=title, machine=machine_info(system.cluster.admin_url), scale=asdict(scale), notes=list(NOTES)
        )
        await asyncio.to_thread(load_profiles, system.cluster.admin_url, READ_PREFIX, 0, scale.read_users, PARTITIONS)
        await asyncio.to_thread(load_baseline_profiles, system.cluster.admin_url, READ_PREFIX, scale.read_users)
        targets = Targets(
            gateway_url=system.gateway_url,
            baseline_url=baseline.url,
            profile_address=f"127.0.0.1:{system.profile_port}",
            cluster_url=system.cluster.admin_url,
            user_prefix=READ_PREFIX,
            users=scale.read_users,
            partitions=PARTITIONS,
        )

        async with PeakRss(system) as rss:
            await request_phase(system, baseline, targets, scale, report, work)
            await lag_phase(system, scale, report)
        report.rss_mb = {**{name: peak for name, peak in rss.peak_mb.items()}, **report.rss_mb}
        await asyncio.to_thread(drain_phase, system, scale, report, work)
        await asyncio.to_thread(growth_phase, system, targets, scale, report)
        report.machine["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        succeeded = True
    finally:
        say("stopping everything")
        baseline.stop()
        system.stop()
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept logs and data in {work}")
    report.elapsed_s = time.perf_counter() - started
    text = render(report)
    await asyncio.to_thread(_write, out, text)
    print(text)
    say(f"wrote {out} in {report.elapsed_s:.0f} s")
    return report


def _write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run (about a second per scenario)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the Markdown report")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy recordings")
    args = parser.parse_args()
    scale = SMOKE if args.smoke else FULL
    if args.no_profile and scale.profile_s:
        scale = replace(scale, profile_s=0)
    asyncio.run(run(scale, args.out, "profilemesh benchmarks" + (" (smoke run)" if args.smoke else "")))


if __name__ == "__main__":
    main()
