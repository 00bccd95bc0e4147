"""The history checker: what it accepts, what it flags, and the statistics bounds it checks.

Hand-made histories name each case the checker claims to catch; seeded random histories, made from a
sequential execution with overlapping intervals around each linearization point, must pass, and the
same histories with one read changed to a value that was certainly overwritten before it must fail.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.jepsen import checker
from tests.jepsen.checker import check, check_statistics, read_bounds, total_bounds
from tests.jepsen.history import HistoryError, Op, dump, dumps, iter_load, load


def op(
    p: int,
    f: str,
    t0: float,
    t1: float | None,
    value: dict[str, str] | None = None,
    result: str = "ok",
    outcome: str | None = None,
    key: str = "u",
) -> Op:
    """A hand-made operation; an ok one's outcome defaults to done (a read's to what its value says)."""
    if result == "ok" and outcome is None:
        outcome = "not_found" if f == "read" and value is None else "done"
    return Op(p, key, f, value, t0, t1, result, "grpc", outcome)


def v(x: str) -> dict[str, str]:
    return {"name": x}


def assert_linearizable(ops: list[Op]) -> None:
    result = check(ops)
    assert result.ok, result.summary()


def assert_violation(ops: list[Op], culprit: Op | None = None) -> checker.Violation:
    result = check(ops)
    assert not result.ok, "expected a violation"
    (violation,) = result.violations
    if culprit is not None:
        assert violation.culprit is culprit, violation.render()
    assert culprit is None or culprit in violation.window
    return violation


# --- linearizable histories ------------------------------------------------------------------------


def test_sequential_life_of_a_profile() -> None:
    assert_linearizable(
        [
            op(1, "read", 0, 1),
            op(1, "create", 2, 3, v("a")),
            op(1, "create", 4, 5, v("b"), outcome="exists"),
            op(1, "update", 6, 7, {"email": "e1"}),
            op(1, "read", 8, 9, {"name": "a", "email": "e1"}),
            op(1, "delete", 10, 11),
            op(1, "delete", 12, 13, outcome="not_found"),
            op(1, "update", 14, 15, v("c"), outcome="not_found"),
            op(1, "read", 16, 17),
        ]
    )


@pytest.mark.parametrize("order", ["first", "second"])
def test_concurrent_writes_in_either_order(order: str) -> None:
    seen = "w1" if order == "second" else "w2"  # the last one to take effect wins
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "update", 2, 6, v("w1")),
            op(2, "update", 3, 5, v("w2")),
            op(3, "read", 7, 8, v(seen)),
        ]
    )


def test_concurrent_read_sees_either_side_of_a_write() -> None:
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "update", 2, 6, v("w")),
            op(2, "read", 3, 4, v("w")),  # the update took effect before this read
            op(3, "read", 3, 5, v("w")),
            op(4, "read", 6.5, 7, v("w")),
        ]
    )
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "update", 2, 6, v("w")),
            op(2, "read", 3, 4, v("c")),  # ... or after it
            op(3, "read", 4.5, 5, v("w")),
        ]
    )


def test_create_racing_create_one_wins() -> None:
    assert_linearizable(
        [
            op(1, "create", 0, 2, v("a")),
            op(2, "create", 1, 3, v("b"), outcome="exists"),
            op(3, "read", 4, 5, v("a")),
        ]
    )


def test_unknown_write_that_took_effect_late() -> None:
    # The client gave up at 2; the update ran after the read at 3 and before the read at 6.
    assert_linearizable(
        [
            op(1, "create", 0, 0.5, v("c")),
            op(1, "update", 1, 2, v("late"), result="unknown"),
            op(2, "read", 3, 4, v("c")),
            op(2, "read", 6, 7, v("late")),
        ]
    )


def test_unknown_operations_that_never_took_effect() -> None:
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "update", 2, 3, v("never"), result="unknown"),
            op(2, "delete", 2, None, result="unknown"),
            op(3, "create", 2, None, v("never2"), result="unknown"),
            op(2, "read", 4, 5, v("c")),
            op(2, "read", 20, 21, v("c")),
        ]
    )


def test_unknown_delete_that_took_effect_late_and_a_recreate() -> None:
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "delete", 2, 3, result="unknown"),
            op(2, "read", 4, 5, v("c")),  # the delete had not run yet
            op(2, "read", 6, 7),  # now it had
            op(3, "create", 8, 9, v("d")),
            op(3, "read", 10, 11, v("d")),
        ]
    )


def test_unknown_creates_with_other_fields_are_not_interchangeable() -> None:
    # Only the second create explains the read: the first would have left its email behind.
    assert_linearizable(
        [
            op(1, "create", 0, None, {"name": "a1", "email": "a1"}, result="unknown"),
            op(2, "create", 0.5, None, {"name": "b1"}, result="unknown"),
            op(3, "update", 2, 3, {"name": "u"}),
            op(3, "read", 4, 5, {"name": "u"}),
        ]
    )


def test_unknown_writes_of_the_same_value_either_explains_a_read() -> None:
    # Values should be unique; when two unknown writes share one, neither may be left out or pinned.
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(2, "update", 2, None, v("z"), result="unknown"),
            op(3, "update", 2, None, v("z"), result="unknown"),
            op(1, "read", 4, 5, v("z")),
        ]
    )


def test_an_unknown_create_a_read_may_have_seen_is_not_interchangeable() -> None:
    # The read's value was written by the second create or by the update; only the create explains it,
    # so it must be tried although the first create has the same fields.
    assert_linearizable(
        [
            op(1, "create", 0, None, {"name": "b"}, result="unknown"),
            op(2, "update", 0, None, {"name": "a", "age": "x"}, result="unknown"),
            op(3, "create", 0.5, None, {"name": "a"}, result="unknown"),
            op(4, "read", 4, 5, {"name": "a"}),
        ]
    )


def test_failed_operations_constrain_nothing() -> None:
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("c")),
            op(2, "update", 2, 3, v("x"), result="fail"),
            op(3, "read", 4, 5, v("c")),
        ]
    )


def test_keys_are_independent() -> None:
    assert_linearizable(
        [
            op(1, "create", 0, 1, v("a"), key="u1"),
            op(2, "create", 0, 1, v("b"), key="u2"),
            op(1, "read", 2, 3, v("a"), key="u1"),
            op(2, "read", 2, 3, v("b"), key="u2"),
        ]
    )


def test_many_pending_unknown_deletes_and_creates_stay_cheap() -> None:
    ops = [op(0, "create", 0, 0.5, v("c0"))]
    for i in range(60):  # 60 unknown deletes and 60 unobserved unknown creates, pending to the end
        ops.append(op(100 + i, "delete", 1 + i, None, result="unknown"))
        ops.append(op(200 + i, "create", 1 + i, None, {"name": f"x{i}"}, result="unknown"))
        ops.append(op(1, "read", 1.1 + i, 1.2 + i, v("c0")))
    ops.append(op(1, "read", 100, 101))
    result = check(ops)
    assert result.ok, result.summary()
    assert result.keys[0].configs < 2_000


# --- histories that are not linearizable ----------------------------------------------------------


def test_stale_read() -> None:
    stale = op(3, "read", 6, 7, v("w1"))
    violation = assert_violation(
        [
            op(1, "create", 0, 1, v("w1")),
            op(1, "update", 2, 3, v("w2")),
            op(2, "read", 4, 5, v("w2")),
            stale,
        ],
        stale,
    )
    assert violation.possible_states == [frozenset({("name", "w2")})]
    assert "w1" in violation.render() and "w2" in violation.render()


def test_lost_acknowledged_write() -> None:
    lost = op(2, "read", 4, 5, {"name": "c"})
    assert_violation(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "update", 2, 3, {"email": "e1"}),  # acknowledged, then gone
            lost,
        ],
        lost,
    )


def test_resurrected_delete() -> None:
    ghost = op(2, "read", 4, 5, v("c"))
    assert_violation([op(1, "create", 0, 1, v("c")), op(1, "delete", 2, 3), ghost], ghost)


def test_read_of_a_value_never_written() -> None:
    bogus = op(2, "read", 2, 3, v("nobody"))
    violation = assert_violation([op(1, "create", 0, 1, v("c")), bogus], bogus)
    assert "never written" in violation.reason


def test_read_of_a_value_only_a_failed_write_tried() -> None:
    failed = op(1, "update", 2, 3, v("f"), result="fail")
    bogus = op(2, "read", 4, 5, v("f"))
    violation = assert_violation([op(1, "create", 0, 1, v("c")), failed, bogus], bogus)
    assert "did not take effect" in violation.reason and failed in violation.window


def test_create_that_succeeded_twice() -> None:
    second = op(2, "create", 2, 3, v("b"))
    assert_violation([op(1, "create", 0, 1, v("a")), second, op(3, "read", 4, 5, v("b"))], second)


def test_not_found_while_the_profile_exists() -> None:
    wrong = op(2, "update", 2, 3, v("x"), outcome="not_found")
    assert_violation([op(1, "create", 0, 1, v("a")), wrong], wrong)


def test_read_before_its_write_was_invoked() -> None:
    early = op(2, "read", 2, 3, v("future"))
    assert_violation([op(1, "create", 0, 1, v("c")), early, op(1, "update", 4, 5, v("future"))], early)


def test_unknown_write_seen_then_unseen() -> None:
    # An unknown update that a read saw took effect; a later read without it is stale.
    stale = op(3, "read", 6, 7, v("c"))
    assert_violation(
        [
            op(1, "create", 0, 1, v("c")),
            op(1, "update", 2, None, v("u"), result="unknown"),
            op(2, "read", 3, 4, v("u")),
            stale,
        ],
        stale,
    )


def test_violation_in_one_key_names_that_key_only() -> None:
    ops = [
        op(1, "create", 0, 1, v("a"), key="good"),
        op(1, "read", 2, 3, v("a"), key="good"),
        op(2, "create", 0, 1, v("a"), key="bad"),
        op(2, "delete", 2, 3, key="bad"),
        op(2, "read", 4, 5, v("a"), key="bad"),
    ]
    result = check(ops)
    assert [k.key for k in result.keys if not k.linearizable] == ["bad"]
    assert "NOT linearizable on 1 key" in result.summary()


def test_window_is_the_earliest_violation_not_the_end_of_the_history() -> None:
    ops = [op(1, "create", 0, 1, v("c0"))]
    t = 2.0
    for i in range(1, 200):
        ops.append(op(1, "update", t, t + 0.5, v(f"c{i}")))
        ops.append(op(2, "read", t + 0.6, t + 0.9, v(f"c{i - 1 if i == 50 else i}")))  # stale at i = 50
        t += 1
    violation = assert_violation(ops)
    assert violation.culprit.value == v("c49") and violation.culprit.invoke_s == pytest.approx(51.6)
    assert len(violation.window) <= 6, violation.render()


# --- randomized: sequential executions with overlapping intervals ----------------------------------


@dataclass
class _Planned:
    op: Op
    point: float  # when it takes effect; inf: never
    effective: bool


Changes = list[tuple[float, str, dict[str, str] | None, Op]]


@dataclass
class Truth:
    """What the execution did: each key's reads since its last delete, the events per type, and when
    the last operation took effect."""

    reads: dict[str, int]
    totals: dict[str, int]
    last_effect: float


def random_history(
    seed: int,
    n_ops: int = 120,
    keys: int = 2,
    processes: int = 5,
    p_unknown: float = 0.08,
    p_fail: float = 0.03,
) -> tuple[list[Op], Changes, Truth]:
    """A linearizable history: each process runs operations one after another; each takes effect at a
    random point inside its interval (an unknown one possibly after the client gave up, or never); the
    outcomes and read values come from applying them in point order to the model.

    Also returns the changes in point order, (point, key, state after, operation), and the truth."""
    rng = random.Random(seed)
    clock = [rng.random() for _ in range(processes)]
    planned: list[_Planned] = []
    for counter in range(1, n_ops + 1):
        p = rng.randrange(processes)
        start = clock[p] + rng.expovariate(4.0)
        end = start + rng.expovariate(1.0) + 0.01
        clock[p] = end
        f = rng.choices(["create", "update", "delete", "read"], [2, 3, 1, 5])[0]
        value: dict[str, str] | None = None
        if f == "create":
            value = {"name": f"n{counter}", "email": f"e{counter}"}
        elif f == "update":
            value = rng.choice([{"name": f"n{counter}"}, {"email": f"e{counter}"}, {"age": f"a{counter}"}])
        key = f"k{rng.randrange(keys)}"
        r = rng.random()
        if r < p_unknown:
            effective = rng.random() < 0.6
            point = rng.uniform(start, end + 3.0) if effective else float("inf")  # maybe late
            complete = end if rng.random() < 0.5 else None
            o = Op(p, key, f, value if f != "read" else None, start, complete, "unknown", "rest")
        elif r < p_unknown + p_fail:
            o = Op(p, key, f, value if f != "read" else None, start, end, "fail", "rest")
            effective, point = False, float("inf")
        else:  # a placeholder outcome (and read value) until the execution below fills them in
            effective, point = True, rng.uniform(start, end)
            o = Op(p, key, f, value if f != "read" else {"?": "?"}, start, end, "ok", "grpc", "done")
        planned.append(_Planned(o, point, effective))
    state: dict[str, checker.State] = {}
    changes: Changes = []
    final: list[Op] = []
    truth = Truth({}, dict.fromkeys(("create", "update", "delete", "read"), 0), 0.0)
    for pl in sorted(planned, key=lambda x: x.point):
        o = pl.op
        if not pl.effective:
            final.append(o)
            continue
        before = state.get(o.key)
        outcome, after, seen = checker.step(before, o.f, None if o.f == "read" else o.value)
        state[o.key] = after
        truth.last_effect = pl.point
        if outcome == "done":  # the operation appended its event
            truth.totals[o.f] += 1
            if o.f in ("read", "delete"):
                truth.reads[o.key] = truth.reads.get(o.key, 0) + 1 if o.f == "read" else 0
        if o.f != "read" and after != before:
            changes.append((pl.point, o.key, None if after is None else dict(after), o))
        if o.result == "ok":
            if o.f == "read":
                o = replace(o, value=None if seen is None else dict(seen), outcome=outcome)
            else:
                o = replace(o, outcome=outcome)
        final.append(o)
    final.sort(key=lambda x: (x.invoke_s, x.process))
    return final, changes, truth


def stale_mutation(ops: list[Op], changes: Changes, seed: int) -> Op | None:
    """Change one ok read to return a state that certainly can't be read any more: the state right after
    an ok write x, returned by a read invoked after an ok change d (an update of one of x's fields, or a
    delete) completed, where x completed before d was invoked. x alone wrote its values, so after d the
    read's value can't exist again, in any order the intervals allow. Returns the mutated read."""
    rng = random.Random(seed)
    candidates: list[tuple[int, dict[str, str]]] = []
    by_key: dict[str, Changes] = {}
    for c in changes:
        by_key.setdefault(c[1], []).append(c)
    for i, r in enumerate(ops):
        if r.f != "read" or r.result != "ok":
            continue
        for _point, _key, after, x in by_key.get(r.key, []):
            if after is None or x.result != "ok" or x.f == "delete" or x.value is None:
                continue
            assert x.complete_s is not None
            for _p2, _k2, _a2, d in by_key[r.key]:
                if d.result != "ok" or d.complete_s is None or d.complete_s >= r.invoke_s or d.invoke_s <= x.complete_s:
                    continue
                if d.f == "delete" or (d.f == "update" and d.value and set(d.value) & set(x.value)):
                    if r.value != after:
                        candidates.append((i, after))
                    break
    if not candidates:
        return None
    i, stale = rng.choice(candidates)
    ops[i] = replace(ops[i], value=stale, outcome="done")
    return ops[i]


SEEDS = range(300)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_linearizable_history_passes_and_a_stale_read_fails(seed: int) -> None:
    ops, changes, _ = random_history(seed)
    result = check(ops)
    assert result.ok, f"seed {seed}: " + result.summary()
    mutated = stale_mutation(ops, changes, seed)
    if mutated is None:  # no read after two ordered changes: the history is checked as linearizable only
        return
    result = check(ops)
    assert not result.ok, f"seed {seed}: the stale read {checker.format_op(mutated)} was accepted"
    (violation,) = result.violations
    assert violation.key == mutated.key


def test_most_random_histories_can_be_given_a_stale_read() -> None:
    """The seeds above check a stale read, not only a clean history, in all but a few."""
    mutated = sum(stale_mutation(*random_history(seed)[:2], seed) is not None for seed in SEEDS)
    assert mutated >= 0.9 * len(SEEDS), mutated


def test_random_histories_with_many_unknowns_and_tight_concurrency() -> None:
    for seed in range(40):
        ops, _, _ = random_history(1000 + seed, n_ops=200, keys=1, processes=8, p_unknown=0.25)
        result = check(ops)
        assert result.ok, f"seed {1000 + seed}: " + result.summary()


# --- statistics ------------------------------------------------------------------------------------


def _life_history() -> list[Op]:
    return [
        op(1, "create", 0, 1, v("c1")),
        op(1, "read", 2, 3, v("c1")),  # first life
        op(2, "read", 2, 3, v("c1")),
        op(1, "delete", 4, 5),
        op(1, "read", 6, 7),  # NOT_FOUND: no event
        op(1, "create", 8, 9, v("c2")),
        op(1, "read", 10, 11, v("c2")),  # current life: 2 acknowledged reads
        op(2, "read", 10, 11, v("c2")),
        op(3, "read", 12, None, result="unknown"),  # may or may not have counted
        op(3, "create", 13, 14, v("x"), outcome="exists"),  # no event
        op(3, "update", 15, 16, v("y"), result="fail"),  # no event
    ]


def test_statistics_bounds_of_the_current_life() -> None:
    ops = _life_history()
    assert read_bounds(ops) == (2, 3)
    assert total_bounds(ops) == {"create": (2, 2), "update": (0, 0), "delete": (1, 1), "read": (4, 5)}
    totals = {"create": 2, "update": 0, "delete": 1, "read": 5}
    assert check_statistics(ops, {"u": 2}, totals).ok
    assert check_statistics(ops, {"u": 3}, totals).ok


@pytest.mark.parametrize(
    ("reads", "totals", "what"),
    # A read lost, one counted twice, an ALREADY_EXISTS counted, a failed update counted, a delete lost,
    # a NOT_FOUND read counted.
    [
        (1, {"create": 2, "update": 0, "delete": 1, "read": 4}, "read count 1 outside [2, 3]"),
        (4, {"create": 2, "update": 0, "delete": 1, "read": 4}, "read count 4 outside [2, 3]"),
        (2, {"create": 3, "update": 0, "delete": 1, "read": 4}, "total create: 3 outside [2, 2]"),
        (2, {"create": 2, "update": 1, "delete": 1, "read": 4}, "total update: 1 outside [0, 0]"),
        (2, {"create": 2, "update": 0, "delete": 0, "read": 4}, "total delete: 0 outside [1, 1]"),
        (2, {"create": 2, "update": 0, "delete": 1, "read": 6}, "total read: 6 outside [4, 5]"),
    ],
)
def test_statistics_violations(reads: int, totals: dict[str, int], what: str) -> None:
    res = check_statistics(_life_history(), {"u": reads}, totals)
    assert not res.ok
    assert any(what in p for p in res.problems), res.summary()


def test_uncounted_reads_can_be_allowed_but_never_extra_ones() -> None:
    totals = {"create": 2, "update": 0, "delete": 1, "read": 3}
    res = check_statistics(_life_history(), {"u": 1}, totals, uncounted_reads_allowed=True)
    assert res.ok and len(res.notes) == 2, res.summary()
    res = check_statistics(_life_history(), {"u": 4}, totals, uncounted_reads_allowed=True)
    assert not res.ok


def test_statistics_when_the_order_against_a_delete_is_uncertain() -> None:
    # Two reads concurrent with the delete and the re-create: the values they returned say which
    # life each belongs to, so the count is exact.
    ops = [
        op(1, "create", 0, 1, v("c1")),
        op(2, "read", 1.5, 6, v("c1")),  # the old life: before the delete
        op(1, "delete", 2, 3),
        op(1, "create", 4, 5, v("c2")),
        op(3, "read", 2.5, 6, v("c2")),  # the current life: after the re-create
    ]
    assert read_bounds(ops) == (1, 1)


def test_statistics_with_an_unknown_delete() -> None:
    ops = [
        op(1, "create", 0, 1, v("c1")),
        op(1, "delete", 2, None, result="unknown"),
        op(2, "read", 3, 4, v("c1")),
    ]
    assert read_bounds(ops) == (0, 1)  # the delete may still run after the read
    assert read_bounds(ops, settled_s=2.5) == (1, 1)  # it was settled before the read
    ops.append(op(2, "read", 6, 7))  # NOT_FOUND: the delete ran after the read
    assert read_bounds(ops) == (0, 0)


@pytest.mark.parametrize("p_unknown", [0.0, 0.1])
def test_statistics_bounds_hold_the_truth_of_random_executions(p_unknown: float) -> None:
    exact = users = 0
    for seed in range(150):
        ops, _, truth = random_history(seed, n_ops=150, keys=3, p_unknown=p_unknown)
        for settled in (None, truth.last_effect):
            res = check_statistics(ops, truth.reads, truth.totals, settled_s=settled)
            assert res.ok, f"seed {seed}, settled {settled}: " + res.summary()
        users += len(res.reads)
        exact += sum(1 for b in res.reads.values() if b.low == b.high)
    if p_unknown == 0.0:  # sound, and exact when every outcome is known (concurrency aside)
        assert exact >= 0.95 * users, (exact, users)


def test_statistics_of_a_user_outside_the_history() -> None:
    res = check_statistics([], {"stranger": 1}, {})
    assert not res.ok and "stranger" in res.problems[0]


# --- format and command line ------------------------------------------------------------------------


def test_history_round_trip_and_bad_records() -> None:
    ops = _life_history()
    buf = io.StringIO()
    dump(ops, buf)
    assert list(iter_load(buf.getvalue().splitlines())) == ops
    assert dumps(ops) == buf.getvalue()
    good = ops[0].to_json()
    bad: list[tuple[dict[str, object], str]] = [
        ({"f": "upsert"}, "f must be"),
        ({"result": "ok", "outcome": "maybe"}, "outcome of an ok create"),
        ({"result": "unknown"}, "outcome must be null"),
        ({"complete_s": -1.0}, "complete_s"),
        ({"value": {"a": 1}}, "value must be"),
        ({"colour": "red"}, "unknown field"),
    ]
    for change, field_name in bad:
        with pytest.raises(HistoryError, match=field_name):
            list(iter_load(["", json.dumps({**good, **change})]))
    with pytest.raises(HistoryError, match="line 2"):
        list(iter_load([json.dumps(good), "{not json"]))


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(dumps(_life_history()))
    assert load(good) == _life_history()
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"reads": {"u": 2}, "totals": {"create": 2, "delete": 1, "read": 4}}))
    assert checker.main([str(good), "--stats", str(stats)]) == 0
    assert "linearizable" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(dumps([op(1, "create", 0, 1, v("c")), op(1, "delete", 2, 3), op(2, "read", 4, 5, v("c"))]))
    assert checker.main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "NOT linearizable" in out and "culprit" in out


# --- against a brute-force oracle: every pruning must keep the verdict -----------------------------


def brute_force_linearizable(ops: list[Op]) -> bool:
    """Every order the intervals allow, every subset of unknown operations, no pruning at all."""
    live = [o for o in ops if o.result != "fail"]

    def ends(o: Op) -> float:
        return o.complete_s if o.result == "ok" and o.complete_s is not None else float("inf")

    def search(rest: list[Op], state: checker.State) -> bool:
        if all(o.result == "unknown" for o in rest):
            return True  # the unknown ones left never took effect
        frontier = min(ends(o) for o in rest)
        for i, o in enumerate(rest):
            if o.invoke_s > frontier:
                continue
            outcome, after, seen = checker.step(state, o.f, None if o.f == "read" else o.value)
            if o.result == "ok":
                if o.f == "read" and (None if o.value is None else frozenset(o.value.items())) != seen:
                    continue
                if o.f != "read" and outcome != o.outcome:
                    continue
            if search(rest[:i] + rest[i + 1 :], after):
                return True
        return False

    return all(search([o for o in live if o.key == k], None) for k in {o.key for o in live})


def tiny_history(seed: int) -> list[Op]:
    """A few operations on one key with tight overlaps, a sequential execution's answers, and then
    random corruptions (so some are linearizable and some are not)."""
    ops, _, _ = random_history(seed, n_ops=7, keys=1, processes=3, p_unknown=0.3, p_fail=0.1)
    rng = random.Random(seed)
    written = [dict(o.value) for o in ops if o.f in ("create", "update") and o.value] or [{"name": "x"}]
    for i, o in enumerate(ops):
        if o.result != "ok" or rng.random() > 0.25:
            continue
        if o.f == "read":
            pick = rng.choice([None, *written, {**rng.choice(written), **rng.choice(written)}])
            ops[i] = replace(o, value=pick, outcome="not_found" if pick is None else "done")
        else:
            outcomes = {"create": ["done", "exists"], "update": ["done", "not_found"], "delete": ["done", "not_found"]}
            ops[i] = replace(o, outcome=rng.choice(outcomes[o.f]))
    return ops


def test_agrees_with_brute_force_on_tiny_histories() -> None:
    verdicts = {True: 0, False: 0}
    for seed in range(600):
        ops = tiny_history(seed)
        expected = brute_force_linearizable(ops)
        got = check(ops)
        assert got.ok == expected, f"seed {seed}: brute force says {expected}\n" + got.summary() + "\n" + dumps(ops)
        verdicts[expected] += 1
    assert min(verdicts.values()) > 100, verdicts  # both kinds well represented
