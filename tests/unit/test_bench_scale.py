"""bench/scale.py's checks over synthetic runs: what holds, what does not, and the table that says so."""

from __future__ import annotations

from bench.scale import DOCS_US, PARTITIONS, Measured, Shard, checks, model_shards, render


def run(shards: int, primaries: list[float], tiers: float = 1.0, partitions: list[int] | None = None) -> Measured:
    """A run at `shards` shards whose services cost `tiers` times the docs' figures; replicas half their primary."""
    held = partitions or [PARTITIONS // shards] * shards
    found = Measured([Shard(k, shards + k, 16384 // shards, held[k]) for k in range(shards)], rps=2000.0)
    found.cpu_us = {tier: DOCS_US[tier] * tiers for tier in ("gateway", "profile_svc", "aggregator_svc")}
    found.cpu_us["reporting_svc"] = 1.0
    for k, us in enumerate(primaries):
        found.cpu_us[f"node {k}"], found.cpu_us[f"node {shards + k}"] = us, us / 2
    found.ops = dict.fromkeys(range(2 * shards), 1000.0)
    found.batch = dict.fromkeys(range(2 * shards), 2.0)
    return found


def verdicts(results: dict[int, Measured]) -> dict[str, bool]:
    return {check.name: check.holds for check in checks(results)}


def test_costs_that_follow_the_models_inputs_hold() -> None:
    found = verdicts({1: run(1, [80.0]), 2: run(2, [40.0, 40.0])})  # 80 + 40 replica = about the model's 119 us
    assert all(found.values()), found
    assert "(b) primaries' CPU max/min, S=2" in found and "(a) gateway us/request, S=2 vs S=1" in found


def test_the_shard_formula_is_a_bound_on_the_primaries_cpu() -> None:
    """shards = N x 119 us / 0.5 puts all of the cluster's CPU on primaries: primaries costing less hold."""
    assert all(holds for name, holds in verdicts({2: run(2, [20.0, 20.0])}).items() if name.startswith("(c)"))
    assert not any(holds for name, holds in verdicts({2: run(2, [80.0, 80.0])}).items() if name.startswith("(c)"))


def test_costs_that_grow_with_the_shards_or_divide_unevenly_do_not() -> None:
    results = {1: run(1, [62.0]), 2: run(2, [60.0, 20.0], tiers=1.5)}
    found = verdicts(results)
    assert not found["(a) gateway us/request, S=2 vs S=1"]
    assert (
        not found["(b) primaries' CPU max/min, S=2"] and not found["(b) primary 1's share of the primaries' CPU, S=2"]
    )
    assert found["(a) gateway us/request, S=1 vs docs"]
    text = render(results, 10, 64, ("1.00 1.00 1.00", "2.00 2.00 2.00"))
    assert text.count("**does not hold**") == sum(not holds for holds in found.values())
    assert "load average before 1.00 1.00 1.00, after 2.00 2.00 2.00" in text


def test_a_shard_holding_more_partitions_is_predicted_a_larger_share() -> None:
    found = verdicts({3: run(3, [20.0, 25.0, 35.0], partitions=[4, 5, 7])})
    assert not found["(b) primary 3's share of the primaries' CPU, S=3"]  # 35 of 80 against a third
    assert found["(b) primary 3's share, S=3, by its 7 of 16 partitions"]  # against 7/16


def test_the_models_shard_count_rounds_up() -> None:
    assert model_shards(100.0) == 1 and model_shards(4_200.0) == 1 and model_shards(4_202.0) == 2
    assert model_shards(100_000.0) == 24  # docs/capacity.md's table
