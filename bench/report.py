"""The benchmark report: Markdown tables of everything measured, targets first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.aggregator_bench import DrainResult
from bench.growth import GrowthResult
from bench.rounds import Key, LoadSummary, Run, Spread, cpu_summaries, round_ratios, summarise
from bench.scenarios import BASELINE_REST, PROFILEMESH_GRPC, PROFILEMESH_REST, SCENARIOS
from bench.streams import StreamSummary

LOAD_HEADER = (
    "scenario",
    "system",
    "c",
    "req/s",
    "req/s by round",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "errors",
    "generator CPU (cores)",
)
RATIO_HEADER = ("target", "median of rounds", "min", "by round", "verdict")
SINGLE_HEADER = ("target", "measured", "verdict")
SYSTEM_TOTAL = "system total (generator excluded)"
GENERATOR_COLUMN = "load generator (not in total)"
IDLE_COLUMN = "other system, idle (not in total)"

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
    runs: list[Run] = field(default_factory=list)  # every request scenario's run, every round
    drains: list[DrainResult] = field(default_factory=list)
    lag: dict[str, float] = field(default_factory=dict)
    growth: list[GrowthResult] = field(default_factory=list)
    streams: StreamSummary | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _load_row(r: LoadSummary) -> tuple[Any, ...]:
    cpu = f"{r.generator_cpu:.2f} of {r.generator_cores}"
    if r.saturated_rounds:
        cpu += f" (saturated in {r.saturated_rounds} round(s)!)"
    return (
        r.scenario,
        r.system,
        r.concurrency,
        _n(r.rps.median),
        " / ".join(_n(value) for value in r.rps.values),
        _n(r.p50_ms, 2),
        _n(r.p99_ms, 2),
        _n(r.p999_ms, 2),
        r.errors,
        cpu,
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _ratio_row(target: str, spread: Spread, ok: bool) -> tuple[str, str, str, str, str]:
    return (
        target,
        f"{spread.median:.2f}x",
        f"{spread.min:.2f}x",
        ", ".join(f"{value:.2f}" for value in spread.values),
        _verdict(ok),
    )


def _rps(run: Run) -> float:
    return run.load.rps


def _p50(run: Run) -> float:
    return run.load.p50_ms


def _p99(run: Run) -> float:
    return run.load.p99_ms


def _system_us(run: Run) -> float:
    return run.system_us


def ratio_targets(runs: list[Run], top: int) -> list[tuple[str, str, str, str, str]]:
    """The A/B targets at concurrency `top`, each a ratio taken within every round; the verdict is the median's."""
    rest: Key = ("a REST reads", PROFILEMESH_REST, top)
    base: Key = ("b REST reads", BASELINE_REST, top)
    grpc_: Key = ("c gRPC GetProfile", PROFILEMESH_GRPC, top)
    mix: Key = ("e REST mix", PROFILEMESH_REST, top)
    base_mix: Key = ("e REST mix", BASELINE_REST, top)
    creates: Key = ("f REST creates", PROFILEMESH_REST, top)
    base_creates: Key = ("f REST creates", BASELINE_REST, top)
    checks: list[tuple[str, Key, Key, Callable[[Run], float], Callable[[float], bool]]] = [
        (f"REST reads via gateway >= 2x baseline req/s at c={top}", rest, base, _rps, lambda r: r >= 2),
        (
            f"REST reads p99 below baseline's at c={top} (REST p99 / baseline p99 < 1)",
            rest,
            base,
            _p99,
            lambda r: r < 1,
        ),
        (
            f"REST reads: system CPU per request <= 0.3x baseline's at c={top} (generator excluded)",
            rest,
            base,
            _system_us,
            lambda r: r <= 0.3,
        ),
        (f"REST mix via gateway >= 2x baseline req/s at c={top}", mix, base_mix, _rps, lambda r: r >= 2),
        (
            f"REST mix: system CPU per request <= 0.5x baseline's at c={top} (generator excluded)",
            mix,
            base_mix,
            _system_us,
            lambda r: r <= 0.5,
        ),
        (
            f"REST creates: system CPU per request <= 0.5x baseline's at c={top} (generator excluded)",
            creates,
            base_creates,
            _system_us,
            lambda r: r <= 0.5,
        ),
        (f"direct gRPC >= 4x baseline req/s at c={top}", grpc_, base, _rps, lambda r: r >= 4),
        (f"REST >= 0.7x direct gRPC req/s at c={top}", rest, grpc_, _rps, lambda r: r >= 0.7),
    ]
    rows = []
    for target, numerator, denominator, figure, meets in checks:
        spread = round_ratios(runs, numerator, denominator, figure)
        if spread is not None:
            rows.append(_ratio_row(target, spread, meets(spread.median)))
    return rows


def idle_latency(runs: list[Run], low: int) -> str | None:
    """REST reads at the lowest concurrency, both systems: batching must add nothing when idle."""
    loads = {(s.scenario, s.system): s for s in summarise([r for r in runs if r.load.concurrency == low])}
    rest, base = loads.get(("a REST reads", PROFILEMESH_REST)), loads.get(("b REST reads", BASELINE_REST))
    p50 = round_ratios(runs, ("a REST reads", PROFILEMESH_REST, low), ("b REST reads", BASELINE_REST, low), _p50)
    if rest is None or base is None or p50 is None:
        return None
    return (
        f"c={low} latency, REST reads (medians of rounds): profilemesh p50 {rest.p50_ms:.2f} ms, "
        f"p99 {rest.p99_ms:.2f} ms; baseline p50 {base.p50_ms:.2f} ms, p99 {base.p99_ms:.2f} ms; "
        f"profilemesh's p50 over the baseline's within a round: median {p50.median:.2f}x, min {p50.min:.2f}x."
    )


def single_targets(report: Report) -> list[tuple[str, str, str]]:
    """Targets measured once per benchmark (no A/B): the aggregator, the lag, the services' memory."""
    rows: list[tuple[str, str, str]] = []
    one = report.drains[0] if report.drains else None
    if one:
        rows.append(
            (
                "aggregator >= 50,000 events/s, 1 replica",
                f"{_n(one.events_per_s)} events/s ({one.mix})",
                _verdict(one.events_per_s >= 50_000 and one.finished),
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
                _verdict(lag["p99_ms"] < 100 and held),
            )
        )
    services = {name: mb for name, mb in report.rss_mb.items() if not name.startswith("baseline")}
    if services:
        worst = max(services, key=services.get)  # type: ignore[arg-type]
        rows.append(
            (
                "every service < 100 MB RSS at steady load",
                f"max {services[worst]:.0f} MB ({worst})",
                _verdict(services[worst] < RSS_LIMIT_MB),
            )
        )
    return rows


def cpu_table(runs: list[Run], concurrency: int) -> list[str]:
    """CPU µs per request by process at one concurrency: medians of rounds, the generator apart."""
    summaries = cpu_summaries([run for run in runs if run.load.concurrency == concurrency])
    processes = sorted({name for summary in summaries for name in summary.by_process})
    rows = [
        (
            summary.key[0],
            summary.key[1],
            *(_n(summary.by_process[name]) if name in summary.by_process else "–" for name in processes),
            _n(summary.system_total),
            _n(summary.generator),
            _n(summary.other_system),
        )
        for summary in summaries
    ]
    return _table(("scenario", "system", *processes, SYSTEM_TOTAL, GENERATOR_COLUMN, IDLE_COLUMN), rows)


def render(report: Report) -> str:
    m = report.machine
    rounds = report.scale["rounds"]
    top, low = max(report.scale["concurrencies"]), min(report.scale["concurrencies"])
    out = [f"# {report.title}", ""]
    out += [
        f"- date: {m['date']}",
        f"- machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']:.0f} GiB, Python {m['python']}, {m['server']}",
        f"- load average before the run: {m['loadavg_before']}; after: {m['loadavg_after']} "
        "(anything else running on the machine shares its cores: figures are provisional)",
        f"- services: production defaults except as set here: {m['config']}; the baseline: gunicorn "
        "sync workers, one per core",
        f"- each load run: {report.scale['load_s']} s after warm-up, concurrency {report.scale['concurrencies']}, "
        f"{rounds} round(s) (each round runs every scenario at every concurrency, the two systems interleaved); "
        f"whole benchmark: {report.elapsed_s:.0f} s",
        "",
    ]

    out += [
        "## Targets",
        "",
        "A/B ratios, profilemesh over the baseline, each taken within one round (round k's figure over round "
        f"k's), over {rounds} round(s): the verdict is the median's; the minimum and every round's ratio show "
        "the spread. CPU per request is the system's total, the load generator excluded.",
        "",
    ]
    out += _table(RATIO_HEADER, ratio_targets(report.runs, top))
    idle = idle_latency(report.runs, low)
    if idle:
        out += [idle, ""]
    out += _table(SINGLE_HEADER, single_targets(report))

    out += [
        "## Requests",
        "",
        "Closed-loop load: REST by wrk (1 thread, Lua scripts in bench/wrk/), gRPC and the bare script by "
        "bench/pyload.py (asyncio). Latency from the generator's side; errors are non-2xx/3xx answers plus "
        "socket errors (gRPC: any failed call). Reads pick uniformly among "
        f"{report.scale['read_users']:,} preloaded profiles. Each figure is the median over the {rounds} "
        "round(s) (req/s of each round beside it); errors are summed over the rounds.",
        "",
    ]
    loads = summarise(report.runs)
    out += _table(LOAD_HEADER, [_load_row(r) for r in loads])
    saturated = sum(r.saturated_rounds for r in loads)
    out += [
        (
            "Generator headroom: every run's generator stayed below 80% of the cores it could use."
            if not saturated
            else f"Generator headroom: **{saturated} run(s) had a saturated generator**; their figures understate "
            "the server."
        ),
        "",
    ]

    for concurrency in report.scale["concurrencies"]:
        out += [
            f"### CPU per request at c={concurrency} (µs of CPU by process, medians of {rounds} round(s))",
            "",
            "Two cores are shared by the generator, the servers and the six cluster nodes, so CPU per request, "
            "more than requests/s, says where a request's cost lies. The system's total is the median of the "
            "rounds' totals over the loaded system's processes (the cluster nodes included, the load generator "
            "not); the generator and the other system's idle processes are shown apart.",
            "",
        ]
        out += cpu_table(report.runs, concurrency)

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
