"""What seeing inside costs: REST reads through the gateway with and without the instrumentation.

`python -m bench.observability [--base REV] [--batch on|off] [--rounds N] [--seconds S] [--out FILE]` runs the same
wrk read load (64 connections) against three systems on free ports, interleaved round by round so
background noise hits each alike:

- uninstrumented: the services as of REV (default: main's merge base), from `git archive`, with code generated from its own protos;
- metrics, tracing off: this tree, OTEL_EXPORTER_OTLP_ENDPOINT unset (the default);
- metrics, tracing on: this tree, every request traced and exported to an OTLP receiver in this process.

Prints, and writes to --out, requests/s and CPU per request of each process group, per run and as medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.accounting import CpuMeter
from bench.seeding import load_profiles
from bench.wrk_runner import run_wrk
from localdev.otlp_sink import OtlpSink
from localdev.ports import free_ports
from localdev.system import System, on_free_ports

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 16
USERS = 10_000
PREFIX = "r"
CONCURRENCY = 64
SETTINGS = {
    "PROFILEMESH_PARTITIONS": str(PARTITIONS),
    "PROFILEMESH_SHUTDOWN_GRACE_S": "5",
    "PROFILEMESH_DRAIN_MS": "100",
    "PROFILEMESH_LOG_LEVEL": "INFO",
}
VARIANTS = ("uninstrumented", "metrics, tracing off", "metrics, tracing on")
GROUPS = ("gateway", "profile_svc", "aggregator_svc", "cluster")


def say(message: str) -> None:
    print(f"[bench.observability {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def base_revision(given: str | None) -> str:
    """The revision an A/B compares this tree with: the one given, else the merge base with main."""
    if given:
        return given
    merge_base = ["git", "merge-base", "HEAD", "main"]
    return subprocess.run(merge_base, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def export_base(rev: str, into: Path) -> None:
    """The services as of `rev`, with code generated from that revision's own protos into `into/gen`."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    protos = sorted(str(path.relative_to(into / "protos")) for path in (into / "protos").rglob("*.proto"))
    (into / "gen").mkdir(exist_ok=True)
    includes = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", "-I", includes]
        + ["--python_out=gen", "--grpc_python_out=gen", *protos],
        cwd=into,
        check=True,
    )


def one_run(variant: str, work: Path, base: Path, sink: OtlpSink, seconds: int) -> dict[str, float]:
    settings = dict(SETTINGS)
    if variant == "metrics, tracing on":
        settings.update(sink.env())
    system: System = on_free_ports(work / variant.replace(" ", "-").replace(",", ""), settings)
    here = Path.cwd()
    if variant == "uninstrumented":
        # The base predates the cluster's per-component users: its services log in as the admin, by URL.
        system.cluster.user_env = lambda component: {"PROFILEMESH_REDIS_URL": system.cluster.admin_url}  # type: ignore[method-assign]  # a bench-only override
        # `python -m service` looks in its working directory first: start the old tree's services.
        os.chdir(base)
        os.environ["PYTHONPATH"] = f"{base}{os.pathsep}{base / 'gen'}"
    try:
        system.start()
    except BaseException:
        system.stop()  # a system that never got healthy still stops what it started
        raise
    finally:
        os.chdir(here)
        os.environ.pop("PYTHONPATH", None)
    try:
        load_profiles(system.cluster.admin_url, PREFIX, 0, USERS, PARTITIONS)
        run_wrk("warm-up", variant, system.gateway_url, "reads.lua", [PREFIX, str(USERS)], 16, 3)
        meter = CpuMeter(
            {
                **{name: (lambda n=name: [system.processes[n].pid]) for name in GROUPS[:3]},
                "cluster": lambda: [p.pid for p in system.cluster.processes.values()],
            }
        )
        before = meter.snapshot()
        result = run_wrk(
            "REST reads", variant, system.gateway_url, "reads.lua", [PREFIX, str(USERS)], CONCURRENCY, seconds
        )
        cpu = CpuMeter.per_request_us(before, meter.snapshot(), result.requests)
        figures = {
            "rps": result.rps,
            "p99_ms": result.p99_ms,
            "errors": result.errors,
            **cpu,
            "total_us": sum(cpu.values()),
        }
        say(
            f"{variant}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms, "
            + ", ".join(f"{k} {v:.0f} us" for k, v in cpu.items())
        )
        return figures
    finally:
        system.stop()


def render(runs: dict[str, list[dict[str, float]]], base_rev: str, seconds: int) -> str:
    lines = [
        "# What the instrumentation costs (bench/observability.py)",
        "",
        f"REST reads (GET /profile/<user> of {USERS:,} preloaded users), wrk with {CONCURRENCY} connections for "
        f"{seconds} s per run; variants interleaved, {len(next(iter(runs.values())))} rounds; medians, then every run. "
        f"Uninstrumented = the services at {base_rev}; the gateway's read batching {SETTINGS['PROFILEMESH_GATEWAY_BATCH']}. CPU is microseconds of CPU per request by process group, "
        f"on a 2-core machine shared with other work.",
        "",
        "| variant | req/s | p99 ms | " + " | ".join(f"{g} us/req" for g in GROUPS) + " | total us/req |",
        "|---|---:|---:|" + "---:|" * (len(GROUPS) + 1),
    ]
    for variant, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        lines.append(
            f"| {variant} | {med['rps']:,.0f} | {med['p99_ms']:.1f} | "
            + " | ".join(f"{med[g]:.0f}" for g in GROUPS)
            + f" | {med['total_us']:.0f} |"
        )
    lines += ["", "Every run:", ""]
    for variant, results in runs.items():
        lines.append(
            f"- {variant}: " + "; ".join(f"{r['rps']:,.0f} req/s, {r['total_us']:.0f} us/req" for r in results)
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base", default=None, help="revision of the uninstrumented services (default: merge base with main)"
    )
    parser.add_argument(
        "--batch",
        choices=("on", "off"),
        default="on",
        help="the gateway's read batching (off: like for like with a base older than batching)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base_rev = base_revision(args.base)
    SETTINGS["PROFILEMESH_GATEWAY_BATCH"] = args.batch
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    sink = OtlpSink(free_ports(1)[0]).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp:
            work = Path(tmp)
            base = work / "base"
            base.mkdir()
            export_base(base_rev, base)
            for round_ in range(args.rounds):
                for variant in VARIANTS:
                    runs[variant].append(one_run(variant, work / f"round{round_}", base, sink, args.seconds))
    finally:
        sink.stop()
    say(f"the OTLP receiver got {len(sink.received()):,} spans")
    text = render(runs, base_rev[:12], args.seconds)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
