"""The benchmark report: Markdown tables of everything measured, targets first."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.aggregator_bench import DrainResult
from bench.growth import GrowthResult
from bench.results import LoadResult
from bench.scenarios import BASELINE_REST, PROFILEMESH_REST, SCENARIOS
from bench.streams import StreamSummary

LOAD_HEADER = ("scenario", "system", "c", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "generator CPU (cores)")
DRAIN_HEADER = (
    "replicas",
    "backlog",
    "events",
    "drain s",
    "events/s",
    "wall s (incl. start-up)",
    "aggregator CPU (cores)",
    "cluster CPU (cores)",
    "commands > 10 ms (slowest ms)",
    "peak RSS MB",
    "finished",
)
GROWTH_HEADER = (
    "profiles",
    "load s",
    "bytes/profile (used_memory)",
    "bytes/profile (MEMORY USAGE)",
    "primaries used_memory MB",
    "c",
    "req/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "errors",
)
LAG_HEADER = (
    "probes",
    "probe retries (shed)",
    "background reads",
    "achieved reads/s",
    "background errors",
    "background dropped",
    "p50 ms",
    "p99 ms",
    "max ms",
)
RSS_LIMIT_MB = 100.0


@dataclass
class Report:
    title: str
    machine: dict[str, Any]
    scale: dict[str, Any]
    loads: list[LoadResult] = field(default_factory=list)
    cpu_us: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # (scenario, system) at max c
    drains: list[DrainResult] = field(default_factory=list)
    lag: dict[str, float] = field(default_factory=dict)
    growth: list[GrowthResult] = field(default_factory=list)
    streams: StreamSummary | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def load(self, scenario: str, system: str, concurrency: int) -> LoadResult | None:
        for result in self.loads:
            if (result.scenario, result.system, result.concurrency) == (scenario, system, concurrency):
                return result
        return None


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _load_row(r: LoadResult) -> tuple[Any, ...]:
    cpu = f"{r.generator_cpu:.2f} of {r.generator_cores}" + ("" if r.generator_headroom else " (saturated!)")
    return (
        r.scenario,
        r.system,
        r.concurrency,
        _n(r.rps),
        _n(r.p50_ms, 2),
        _n(r.p99_ms, 2),
        _n(r.p999_ms, 2),
        r.errors,
        cpu,
    )


def _targets(report: Report) -> list[tuple[str, str, str]]:
    top = max(report.scale["concurrencies"])
    rest = report.load("a REST reads", PROFILEMESH_REST, top)
    base = report.load("b REST reads", BASELINE_REST, top)
    grpc_ = report.load("c gRPC GetProfile", "profilemesh (direct gRPC)", top)
    rows: list[tuple[str, str, str]] = []
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    if rest and base and base.rps:
        ratio = rest.rps / base.rps
        rows.append(
            (
                f"REST via gateway >= 2x baseline req/s at c={top}, lower p99",
                f"{ratio:.2f}x; p99 {rest.p99_ms:.1f} vs {base.p99_ms:.1f} ms",
                verdict(ratio >= 2 and rest.p99_ms < base.p99_ms),
            )
        )
    if grpc_ and base and base.rps:
        ratio = grpc_.rps / base.rps
        rows.append((f"direct gRPC >= 4x baseline req/s at c={top}", f"{ratio:.2f}x", verdict(ratio >= 4)))
    if rest and grpc_ and grpc_.rps:
        share = rest.rps / grpc_.rps
        rows.append((f"REST >= 70% of direct gRPC req/s at c={top}", f"{100 * share:.0f}%", verdict(share >= 0.7)))
    one = report.drains[0] if report.drains else None
    if one:
        rows.append(
            (
                "aggregator >= 50,000 events/s, 1 replica",
                f"{_n(one.events_per_s)} events/s ({one.mix})",
                verdict(one.events_per_s >= 50_000 and one.finished),
            )
        )
    if report.lag:
        lag = report.lag
        held = lag["background_rate"] >= 0.95 * lag["rate"] and not lag["background_errors"]
        rows.append(
            (
                f"lag p99 < 100 ms at {lag['rate']:,.0f} reads/s",
                f"{lag['p99_ms']:.1f} ms at {lag['background_rate']:,.0f} reads/s achieved"
                + ("" if held else f", {lag['background_errors']:,} failed, {lag['background_dropped']:,} dropped"),
                verdict(lag["p99_ms"] < 100 and held),
            )
        )
    services = {name: mb for name, mb in report.rss_mb.items() if not name.startswith("baseline")}
    if services:
        worst = max(services, key=services.get)  # type: ignore[arg-type]
        rows.append(
            (
                "every service < 100 MB RSS at steady load",
                f"max {services[worst]:.0f} MB ({worst})",
                verdict(services[worst] < RSS_LIMIT_MB),
            )
        )
    return rows


def render(report: Report) -> str:
    m = report.machine
    out = [f"# {report.title}", ""]
    out += [
        f"- date: {m['date']}",
        f"- machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']:.0f} GiB, Python {m['python']}, {m['server']}",
        f"- load average before the run: {m['loadavg_before']}; after: {m['loadavg_after']} "
        "(anything else running on the machine shares its cores: one run, provisional figures)",
        f"- services: production defaults except as set here: {m['config']}; the baseline: gunicorn "
        "sync workers, one per core",
        f"- each load run: {report.scale['load_s']} s after warm-up, concurrency {report.scale['concurrencies']}; "
        f"whole benchmark: {report.elapsed_s:.0f} s",
        "",
    ]

    out += ["## Targets (ratios within this run)", ""]
    out += _table(("target", "measured", "verdict"), _targets(report))

    out += [
        "## Requests",
        "",
        "Closed-loop load: REST by wrk (1 thread, Lua scripts in bench/wrk/), gRPC and the bare script by "
        "bench/pyload.py (asyncio). Latency from the generator's side; errors are non-2xx/3xx answers plus "
        "socket errors (gRPC: any failed call). Reads pick uniformly among "
        f"{report.scale['read_users']:,} preloaded profiles.",
        "",
    ]
    out += _table(LOAD_HEADER, [_load_row(r) for r in report.loads])
    saturated = [r for r in report.loads if not r.generator_headroom]
    out += [
        (
            "Generator headroom: every run's generator stayed below 80% of the cores it could use."
            if not saturated
            else f"Generator headroom: **{len(saturated)} run(s) had a saturated generator**; their figures understate "
            "the server."
        ),
        "",
    ]

    if report.cpu_us:
        components = sorted({name for usage in report.cpu_us.values() for name in usage})
        out += [
            f"### CPU per request at c={max(report.scale['concurrencies'])} (µs of CPU, by process)",
            "",
            "Two cores are shared by the generator, the servers and the six cluster nodes, so CPU per request, "
            "more than requests/s, says where a request's cost lies.",
            "",
        ]
        rows = [
            (scenario, system, *(_n(usage.get(name, 0.0)) for name in components), _n(sum(usage.values())))
            for (scenario, system), usage in report.cpu_us.items()
        ]
        out += _table(("scenario", "system", *components, "total"), rows)

    if report.drains:
        out += [
            "## Aggregator",
            "",
            "A backlog written straight into the partition streams while no aggregator ran (the REST mix of "
            "event types, and reads only), then 1 or 2 replicas started; events/s from their first applied "
            "batch until the group had nothing left. Commands > 10 ms: the primaries' SLOWLOG meanwhile "
            "(almost all of them the apply script).",
            "",
        ]
        out += _table(
            DRAIN_HEADER,
            [
                (
                    d.replicas,
                    d.mix,
                    _n(d.backlog),
                    _n(d.drain_s, 2),
                    _n(d.events_per_s),
                    _n(d.wall_s, 2),
                    _n(d.aggregator_cores, 2),
                    _n(d.cluster_cores, 2),
                    f"{d.slow_commands} ({d.slowest_ms:.0f})",
                    _n(d.peak_rss_mb),
                    "yes" if d.finished else "no: " + "; ".join(d.notes),
                )
                for d in report.drains
            ],
        )
    if report.lag:
        lag = report.lag
        out += [
            "### Read-to-visible lag",
            "",
            f"From a GetProfile's answer to its read showing in ReportingService, with an open-loop background of "
            f"{lag['rate']:,.0f} gRPC reads/s (bench/lag.py; at most 128 in flight, reads due beyond that are "
            "dropped and counted).",
            "",
        ]
        out += _table(
            LAG_HEADER,
            [
                (
                    _n(lag["probes"]),
                    _n(lag["probe_retries"]),
                    _n(lag["background_reads"]),
                    _n(lag["background_rate"]),
                    _n(lag["background_errors"]),
                    _n(lag["background_dropped"]),
                    _n(lag["median_ms"], 2),
                    _n(lag["p99_ms"], 2),
                    _n(lag["max_ms"], 2),
                )
            ],
        )

    if report.growth:
        out += [
            "## Growth",
            "",
            "Profiles bulk-loaded straight into the cluster (two string fields each). Bytes per profile: the "
            "primaries' INFO used_memory delta over the profiles added (replicas hold one more copy); MEMORY "
            "USAGE: mean of sampled keys. Reads: REST via the gateway, uniform over all loaded profiles.",
            "",
        ]
        out += _table(
            GROWTH_HEADER,
            [
                (
                    _n(g.profiles),
                    _n(g.load_s, 1),
                    _n(g.bytes_per_profile),
                    _n(g.memory_usage_bytes),
                    _n(g.used_memory_mb),
                    g.read.concurrency,
                    _n(g.read.rps),
                    _n(g.read.p50_ms, 2),
                    _n(g.read.p99_ms, 2),
                    _n(g.read.p999_ms, 2),
                    g.read.errors,
                )
                for g in report.growth
            ],
        )
    if report.streams:
        s = report.streams
        out += [
            "### Stream length during the request scenarios",
            "",
            "XLEN summed over the partition streams, sampled every second while every request scenario ran "
            "(the aggregator trims what every group has acknowledged once it is older than "
            "PROFILEMESH_EVENTS_RETENTION_S, the window subscribers can resume from).",
            "",
        ]
        out += _table(
            (
                "events appended",
                "samples",
                "max XLEN (all partitions)",
                "final XLEN",
                "baseline's single stream at the end (never trimmed)",
            ),
            [(_n(s.appended), s.samples, _n(s.max_total), _n(s.final_total), _n(s.baseline_final))],
        )

    if report.rss_mb:
        out += [
            "## Memory of the processes",
            "",
            "Peak RSS sampled every 50 ms during the request scenarios and the lag run (bench/sampling.py); "
            "the baseline's figure is its gunicorn master plus workers.",
            "",
        ]
        out += _table(("process", "peak RSS MB"), [(name, _n(mb)) for name, mb in report.rss_mb.items()])

    if report.profiles:
        out += [
            "## Where the time goes (py-spy)",
            "",
            "Shares of the samples in which the process was busy (idle excluded). grpc's Cython and asyncio's C "
            "code show as their Python caller (e.g. `Handle._run`), so their cost appears as that frame's self "
            "time; `Thread.run` is grpc's completion-queue poller thread.",
            "",
        ]
        for name, summary in report.profiles.items():
            busy = summary.get("samples", [("", 0)])[0][1]
            out += [f"### {name} ({busy:.0f} busy samples)", ""]
            rows = [(f"{value:.1f}%", frame) for frame, value in summary.get("self", [])]
            out += _table(("self", "frame"), rows)
            rows = [(f"{value:.1f}%", frame) for frame, value in summary.get("inclusive", []) if value < 99]
            out += _table(("inclusive", "frame"), rows[:12])

    if report.notes:
        out += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(out)


def expected_load_rows(concurrencies: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """Every (scenario, system, concurrency) row a complete report has; the smoke test checks them."""
    return [(s.name, s.system, c) for c in concurrencies for s in SCENARIOS]
