"""The benchmark's A/B arithmetic over synthetic runs: ratios within a round, their min and median,
medians over rounds, and the system's CPU total without the load generator."""

from __future__ import annotations

import pytest

from bench.report import (
    GENERATOR_COLUMN,
    IDLE_COLUMN,
    RATIO_HEADER,
    SYSTEM_TOTAL,
    cpu_table,
    idle_latency,
    ratio_targets,
)
from bench.results import LoadResult
from bench.rounds import Run, cpu_summaries, generator_us, round_ratios, split_by_system, summarise
from bench.scenarios import BASELINE_REST, PROFILEMESH_GRPC, PROFILEMESH_REST

REST = ("a REST reads", PROFILEMESH_REST)
BASE = ("b REST reads", BASELINE_REST)
GRPC = ("c gRPC GetProfile", PROFILEMESH_GRPC)


def load(
    name: tuple[str, str],
    concurrency: int,
    requests: int,
    *,
    p50: float = 1.0,
    p99: float = 2.0,
    errors: int = 0,
    generator_cpu: float = 0.5,
    duration_s: float = 2.0,
) -> LoadResult:
    return LoadResult(
        scenario=name[0],
        system=name[1],
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p99 * 2,
        errors=errors,
        generator_cpu=generator_cpu,
        generator_cores=1,
    )


def test_ratios_are_taken_within_each_round_not_across_rounds() -> None:
    # Round 0: a slow machine for both sides (ratio 2.0); round 1: fast for both (ratio 1.0); round 2: 3.0.
    runs = [
        Run(0, load(REST, 64, 2000), {}),
        Run(0, load(BASE, 64, 1000), {}),
        Run(1, load(REST, 64, 8000), {}),
        Run(1, load(BASE, 64, 8000), {}),
        Run(2, load(BASE, 64, 1000), {}),  # the baseline ran first in this round: order doesn't matter
        Run(2, load(REST, 64, 3000), {}),
    ]
    spread = round_ratios(runs, (*REST, 64), (*BASE, 64), lambda run: run.load.rps)
    assert spread is not None
    assert spread.values == (2.0, 1.0, 3.0)
    assert spread.min == 1.0
    assert spread.median == 2.0
    assert spread.max == 3.0
    # A ratio of medians would be 3000/1000 = 3.0: not what the report gives.


def test_a_round_missing_either_side_or_with_nothing_served_is_left_out() -> None:
    runs = [
        Run(0, load(REST, 64, 2000), {}),
        Run(0, load(BASE, 64, 0), {}),  # the baseline served nothing: no ratio for round 0
        Run(1, load(REST, 64, 3000), {}),
        Run(1, load(BASE, 64, 1000), {}),
        Run(2, load(REST, 64, 5000), {}),  # no baseline run in round 2
    ]
    spread = round_ratios(runs, (*REST, 64), (*BASE, 64), lambda run: run.load.rps)
    assert spread is not None and spread.values == (3.0,)
    assert round_ratios(runs, (*GRPC, 64), (*BASE, 64), lambda run: run.load.rps) is None


def test_the_system_total_excludes_the_load_generator() -> None:
    # 1,000 requests in 2 s with the generator at 0.5 cores: 1 s of CPU, 1,000 µs per request.
    heavy_generator = load(REST, 64, 1000, generator_cpu=0.5, duration_s=2.0)
    run = Run(0, heavy_generator, {"gateway": 300.0, "profile_svc": 400.0, "cluster (6 nodes)": 150.0})
    assert generator_us(heavy_generator) == pytest.approx(1000.0)
    assert run.generator_us == pytest.approx(1000.0)
    assert run.system_us == pytest.approx(850.0)
    assert generator_us(load(REST, 64, 0)) == 0.0


def test_each_system_counts_its_own_processes_and_the_shared_cluster() -> None:
    usage = {
        "gateway": 300.0,
        "profile_svc": 400.0,
        "aggregator_svc": 100.0,
        "cluster (6 nodes)": 150.0,
        "baseline": 7.0,
    }
    own, idle = split_by_system(usage, baseline=False)
    assert own == {"gateway": 300.0, "profile_svc": 400.0, "aggregator_svc": 100.0, "cluster (6 nodes)": 150.0}
    assert idle == {"baseline": 7.0}
    own, idle = split_by_system(usage, baseline=True)
    assert own == {"baseline": 7.0, "cluster (6 nodes)": 150.0}
    assert idle == {"gateway": 300.0, "profile_svc": 400.0, "aggregator_svc": 100.0}
    run = Run(0, load(BASE, 64, 1000), own, idle)
    assert run.system_us == pytest.approx(157.0)
    assert run.other_system_us == pytest.approx(800.0)


def test_cpu_medians_per_process_and_the_total_is_the_median_of_round_totals() -> None:
    runs = [
        Run(0, load(REST, 16, 1000, generator_cpu=0.1), {"gateway": 100.0, "profile_svc": 500.0}),
        Run(1, load(REST, 16, 1000, generator_cpu=0.3), {"gateway": 300.0, "profile_svc": 100.0}),
        Run(2, load(REST, 16, 1000, generator_cpu=0.2), {"gateway": 200.0, "profile_svc": 300.0}),
    ]
    (summary,) = cpu_summaries(runs)
    assert summary.key == (*REST, 16)
    assert summary.by_process == {"gateway": 200.0, "profile_svc": 300.0}
    # Totals by round: 600, 400, 500: the median is 500 (here equal to the sum of the medians, by design below).
    assert summary.system_total == pytest.approx(500.0)
    assert summary.generator == pytest.approx(400.0)  # 0.2 cores x 2 s / 1,000 requests

    skewed = [
        Run(0, load(REST, 16, 1000), {"gateway": 100.0, "profile_svc": 100.0}),
        Run(1, load(REST, 16, 1000), {"gateway": 200.0, "profile_svc": 900.0}),
        Run(2, load(REST, 16, 1000), {"gateway": 900.0, "profile_svc": 200.0}),
    ]
    (summary,) = cpu_summaries(skewed)
    assert summary.by_process == {"gateway": 200.0, "profile_svc": 200.0}
    assert summary.system_total == pytest.approx(1100.0)  # totals 200, 1100, 1100; not 200 + 200


def test_requests_table_gives_medians_over_rounds_and_sums_errors() -> None:
    runs = [
        Run(0, load(BASE, 1, 1000, p50=1.0, p99=9.0, errors=1), {}),
        Run(1, load(BASE, 1, 3000, p50=3.0, p99=5.0), {}),
        Run(2, load(BASE, 1, 2000, p50=2.0, p99=7.0, errors=2, generator_cpu=0.95), {}),
    ]
    (summary,) = summarise(runs)
    assert summary.rps.values == (500.0, 1500.0, 1000.0)
    assert summary.rps.median == 1000.0
    assert (summary.p50_ms, summary.p99_ms) == (2.0, 7.0)
    assert summary.errors == 3
    assert summary.saturated_rounds == 1


def test_target_rows_carry_min_and_median_and_judge_on_the_median() -> None:
    runs = []
    # REST/baseline req/s ratios by round: 2.5, 1.5, 2.2 -> median 2.2 (met), min 1.5.
    for round_, (rest, base) in enumerate(((2500, 1000), (1500, 1000), (2200, 1000))):
        runs.append(Run(round_, load(REST, 64, rest, p99=10.0), {"gateway": 100.0, "cluster (6 nodes)": 100.0}))
        runs.append(Run(round_, load(BASE, 64, base, p99=20.0), {"baseline": 300.0, "cluster (6 nodes)": 100.0}))
        runs.append(Run(round_, load(GRPC, 64, 3 * rest), {}))
    rows = {row[0]: dict(zip(RATIO_HEADER, row, strict=True)) for row in ratio_targets(runs, 64)}
    rps = rows["REST reads via gateway >= 2x baseline req/s at c=64"]
    assert (rps["median of rounds"], rps["min"], rps["by round"], rps["verdict"]) == (
        "2.20x",
        "1.50x",
        "2.50, 1.50, 2.20",
        "met",
    )
    p99 = rows["REST reads p99 below baseline's at c=64 (REST p99 / baseline p99 < 1)"]
    assert (p99["median of rounds"], p99["verdict"]) == ("0.50x", "met")
    cpu = rows["REST reads: system CPU per request <= 0.3x baseline's at c=64 (generator excluded)"]
    assert (cpu["median of rounds"], cpu["verdict"]) == ("0.50x", "**not met**")  # 200 / 400 µs
    grpc_ = rows["direct gRPC >= 4x baseline req/s at c=64"]
    assert (grpc_["median of rounds"], grpc_["min"], grpc_["verdict"]) == ("6.60x", "4.50x", "met")
    share = rows["REST >= 0.7x direct gRPC req/s at c=64"]
    assert (share["median of rounds"], share["verdict"]) == ("0.33x", "**not met**")


def test_a_heavy_generator_does_not_decide_the_cpu_target() -> None:
    # profilemesh's system: 200 µs; its generator 2,000 µs. Baseline's system: 1,000 µs, generator 100 µs.
    runs = [
        Run(
            0, load(REST, 64, 1000, generator_cpu=1.0), {"gateway": 150.0, "cluster (6 nodes)": 50.0}, {"baseline": 5.0}
        ),
        Run(
            0,
            load(BASE, 64, 1000, generator_cpu=0.05),
            {"baseline": 900.0, "cluster (6 nodes)": 100.0},
            {"gateway": 400.0},
        ),
    ]
    rows = {row[0]: row for row in ratio_targets(runs, 64)}
    cpu = rows["REST reads: system CPU per request <= 0.3x baseline's at c=64 (generator excluded)"]
    assert cpu[1:] == ("0.20x", "0.20x", "0.20", "met")

    table = cpu_table(runs, 64)
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    first = dict(zip(header, (cell.strip() for cell in table[2].strip("|").split("|")), strict=True))
    assert first[SYSTEM_TOTAL] == "200"
    assert first[GENERATOR_COLUMN] == "2,000"
    assert (first["baseline"], first[IDLE_COLUMN]) == ("–", "5")  # the other system's process: apart
    second = dict(zip(header, (cell.strip() for cell in table[3].strip("|").split("|")), strict=True))
    assert (second[SYSTEM_TOTAL], second["gateway"], second[IDLE_COLUMN]) == ("1,000", "–", "400")


def test_idle_latency_line_names_both_systems_p50_and_p99() -> None:
    runs = [
        Run(0, load(REST, 1, 500, p50=1.5, p99=3.0), {}),
        Run(0, load(BASE, 1, 900, p50=1.0, p99=2.0), {}),
        Run(1, load(REST, 1, 500, p50=1.2, p99=2.5), {}),
        Run(1, load(BASE, 1, 900, p50=1.0, p99=2.2), {}),
        Run(0, load(REST, 64, 500, p50=50.0), {}),  # another concurrency: not in the c=1 line
    ]
    line = idle_latency(runs, 1)
    assert line is not None
    assert "profilemesh p50 1.35 ms, p99 2.75 ms" in line
    assert "baseline p50 1.00 ms, p99 2.10 ms" in line
    assert "median 1.35x, min 1.20x" in line
