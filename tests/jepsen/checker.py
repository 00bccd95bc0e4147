"""Linearizability of a recorded history, per profile, and the statistics checked against it.

The model of one profile: absent, or a set of (field, value) items. create needs it absent (else the
client sees ALREADY_EXISTS) and sets its fields; update needs it present (else NOT_FOUND) and merges
its fields in (HSET); delete needs it present (else NOT_FOUND) and removes it; read returns it.

The search is Wing & Gong's with Lowe's memoization, as Knossos and Porcupine do it: take any
operation no pending operation's completion precedes, apply it to the model, and backtrack when the
model disagrees with what the client saw; a (set of linearized operations, model state) pair already
explored is never explored again. Profiles are independent objects, so each key is checked alone
(P-compositionality).

An `unknown` operation may take effect at any time after its invocation, or never: its completion
is at +infinity and the search may end with it unplaced. Pruning that keeps the search small, each
sound (it never turns a linearizable history into a violation or back):

- `fail` operations and `unknown` reads are left out: they constrain nothing.
- Writes carry unique values, so an `unknown` create/update whose value some `ok` read returned took
  effect, before that read completed: it is checked as an `ok` one completing then (a value two
  writes share proves nothing, and is left alone).
- An `unknown` update whose values no read returned is left out: had it taken effect, every later
  read would have shown its values until they were overwritten or deleted, so leaving it out
  changes no read.
- An `unknown` operation is never placed where it changes nothing (delete of an absent profile,
  create of a present one): any continuation from there is one from the state before it, with the
  operation left out.
- Pending `unknown` deletes are interchangeable (so are unobserved `unknown` creates of the same
  field names): only the earliest invoked one of each class is tried at each step.
- An operation that changes nothing (a read, an answer of exists or not_found) and agrees with the
  state now is placed now, without trying the alternatives: moved to the front of any successful
  continuation, it still fits the model and the real-time order.

`tests/unit/test_checker.py` checks every verdict against a search with none of this pruning.

A history that is not linearizable is reported with the earliest completion time at which the
history so far (operations still in flight then count as unknown) already has no linearization:
the operation completing then, the states the profile could have had when it ran, and the
operations around it.

Run `python -m tests.jepsen.checker history.jsonl [--stats stats.json]`; exits 1 on a violation.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.jepsen.history import KINDS, Op, load

INF = math.inf

State = frozenset[tuple[str, str]] | None  # None: the profile is absent

_CREATE, _UPDATE, _DELETE, _READ = 0, 1, 2, 3
_KIND = {"create": _CREATE, "update": _UPDATE, "delete": _DELETE, "read": _READ}
_DONE, _EXISTS, _NOT_FOUND = 0, 1, 2
_OUTCOME = {"done": _DONE, "exists": _EXISTS, "not_found": _NOT_FOUND}


def _pairs(value: Mapping[str, str] | None) -> frozenset[tuple[str, str]] | None:
    return None if value is None else frozenset(value.items())


def step(state: State, f: str, value: Mapping[str, str] | None) -> tuple[str, State, State]:
    """The model: (outcome, new state, what a read returns) of `f` with `value` applied to `state`."""
    k = _KIND[f]
    new, out = _apply(state, k, _pairs(value), dict(value or {}))
    return {_DONE: "done", _EXISTS: "exists", _NOT_FOUND: "not_found"}[out], new, state


def _apply(state: State, kind: int, pairs: State, fields: dict[str, str]) -> tuple[State, int]:
    if kind == _CREATE:
        return (pairs, _DONE) if state is None else (state, _EXISTS)
    if kind == _UPDATE:
        if state is None:
            return None, _NOT_FOUND
        merged = dict(state)
        merged.update(fields)
        return frozenset(merged.items()), _DONE
    if kind == _DELETE:
        return (None, _NOT_FOUND) if state is None else (None, _DONE)
    return state, (_NOT_FOUND if state is None else _DONE)


@dataclass
class _COp:
    """An operation as the search sees it (after the pruning of `_prepare`)."""

    src: Op
    kind: int
    pairs: State
    fields: dict[str, str]
    outcome: int  # for required operations: what the client saw
    invoke: float
    complete: float  # INF for an unknown operation
    required: bool  # False: unknown, may be left out
    sym: tuple[Any, ...] | None = None  # interchangeable unknown operations share it


@dataclass
class Violation:
    """Why one key's history has no linearization, in the fewest operations that show it."""

    key: str
    culprit: Op
    possible_states: list[State]  # the states the profile could have had where the culprit was tried
    window: list[Op]
    reason: str
    ops_before: int  # operations of the key that completed before the culprit: they linearize

    def render(self) -> str:
        lines = [f"key {self.key!r}: {self.reason}", f"  culprit:  {format_op(self.culprit)}"]
        if self.possible_states:
            shown = " | ".join(format_state(s) for s in self.possible_states)
            lines.append(f"  the states the profile could have had where it ran: {shown}")
        lines.append(
            f"  the {self.ops_before} operations of this key that completed before it linearize; the window"
            f" (ops around it, by invocation; * = culprit):"
        )
        t0 = min((op.invoke_s for op in self.window), default=0.0)
        for op in self.window:
            mark = "*" if op is self.culprit else " "
            lines.append(f"   {mark} {format_op(op, t0)}")
        return "\n".join(lines)


@dataclass
class KeyResult:
    key: str
    ops: int  # all operations of the key
    searched: int  # operations the search placed or could place (after pruning)
    unknown: int
    linearizable: bool
    configs: int  # (linearized set, state) pairs explored
    seconds: float
    violation: Violation | None = None


@dataclass
class Result:
    keys: list[KeyResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(k.linearizable for k in self.keys)

    @property
    def violations(self) -> list[Violation]:
        return [k.violation for k in self.keys if k.violation is not None]

    def summary(self) -> str:
        n = sum(k.ops for k in self.keys)
        unknown = sum(k.unknown for k in self.keys)
        bad = [k for k in self.keys if not k.linearizable]
        slowest = max(self.keys, key=lambda k: k.seconds, default=None)
        lines = [
            f"{n} operations on {len(self.keys)} key(s) ({unknown} unknown outcomes) checked in {self.seconds:.2f} s:"
            + (" linearizable" if not bad else f" NOT linearizable on {len(bad)} key(s)")
        ]
        if slowest is not None:
            lines.append(
                f"  slowest key {slowest.key!r}: {slowest.ops} ops, {slowest.configs} configurations, {slowest.seconds:.2f} s"
            )
        for k in bad:
            assert k.violation is not None
            lines.append(k.violation.render())
        return "\n".join(lines)


def format_state(state: State) -> str:
    if state is None:
        return "absent"
    return "{" + ", ".join(f"{f}={v}" for f, v in sorted(state)) + "}"


def format_op(op: Op, t0: float = 0.0) -> str:
    """One readable line: times relative to t0, process, operation, value, result."""
    done = "   ...   " if op.complete_s is None else f"{op.complete_s - t0:9.4f}"
    value = "" if op.value is None else " " + format_state(_pairs(op.value))
    if op.result == "ok":
        shown = op.outcome or ""
        if op.f == "read":
            shown = "not_found" if op.value is None else "->" + value
            value = ""
    else:
        shown = op.result.upper() + (f" ({op.error})" if op.error else "")
    return f"[{op.invoke_s - t0:9.4f} .. {done}] p{op.process:<3} {op.via:4} {op.f:6}{value}  {shown}"


# --- preparation: what the search needs, with the pruning the module docstring argues -------------


@dataclass
class _Prepared:
    ops: list[_COp]
    never_written: tuple[Op, tuple[str, str], list[Op]] | None = None  # read, the pair, who tried to write it


def _prepare(ops: Sequence[Op]) -> _Prepared:
    """The operations of one key the search needs, with unknown ones bounded or left out where sound."""
    effective: dict[tuple[str, str], list[Op]] = defaultdict(list)  # pair -> writes that may have written it
    ineffective: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.f in ("create", "update") and op.value:
            may_have_run = op.result == "unknown" or (op.result == "ok" and op.outcome == "done")
            for pair in op.value.items():
                (effective if may_have_run else ineffective)[pair].append(op)
    observed_by: dict[int, float] = {}  # id(unknown write) -> earliest completion of a read that saw it
    seen: set[tuple[str, str]] = set()
    for op in ops:
        if op.f != "read" or op.result != "ok" or op.value is None:
            continue
        assert op.complete_s is not None
        for pair in op.value.items():
            seen.add(pair)
            writers = effective.get(pair, [])
            if not writers:
                return _Prepared([], (op, pair, ineffective.get(pair, [])))
            if len(writers) == 1 and writers[0].result == "unknown":
                w = id(writers[0])
                observed_by[w] = min(observed_by.get(w, INF), op.complete_s)
    out: list[_COp] = []
    for op in ops:
        if op.result == "fail" or (op.result == "unknown" and op.f == "read"):
            continue
        kind = _KIND[op.f]
        pairs = _pairs(op.value) if op.f != "read" or op.result == "ok" else None
        fields = dict(op.value or {})
        if op.result == "ok":
            assert op.complete_s is not None and op.outcome is not None
            out.append(_COp(op, kind, pairs, fields, _OUTCOME[op.outcome], op.invoke_s, op.complete_s, True))
            continue
        bound = observed_by.get(id(op))
        if bound is not None:  # it took effect, before a read that saw it completed
            out.append(_COp(op, kind, pairs, fields, _DONE, op.invoke_s, max(bound, op.invoke_s), True))
        elif kind == _UPDATE and not any(p in seen for p in fields.items()):
            continue  # unobserved unknown update: leaving it out changes no read
        else:
            sym: tuple[Any, ...] | None = None
            if kind == _DELETE:
                sym = ("delete",)
            elif kind == _CREATE and not any(p in seen for p in fields.items()):
                sym = ("create", frozenset(fields))
            out.append(_COp(op, kind, pairs, fields, _DONE, op.invoke_s, INF, False, sym))
    return _Prepared(out)


def _holds(o: _COp, state: State) -> bool:
    """Whether a required operation that changes nothing (a read, or an answer of exists/not_found)
    agrees with `state`."""
    if o.kind == _READ:
        return o.pairs == state
    return (state is not None) if o.outcome == _EXISTS else (state is None)


# --- the search ----------------------------------------------------------------------------------


@dataclass
class _SearchResult:
    ok: bool
    configs: int
    deepest: list[_COp] = field(default_factory=list)  # the longest linearized prefix (explain mode)
    deepest_state: State = None
    blocked: _COp | None = None  # the first operation that completed unplaced at the deepest dead end
    rejected: dict[int, list[State]] = field(default_factory=dict)  # id(op) -> states the model refused it in


def _linked(n: int) -> tuple[int, int, list[int], list[int]]:
    """Items 0..n-1 as a doubly linked list in order, with sentinels: (head, tail, next, previous)."""
    head, tail = n, n + 1
    nxt = list(range(1, n + 1)) + [0, 0]
    prv = [n] + list(range(0, n - 1)) + [0, 0]
    if n:
        nxt[head], prv[tail], nxt[n - 1] = 0, n - 1, tail
    else:
        nxt[head], prv[tail] = tail, head
    return head, tail, nxt, prv


def _search(ops: list[_COp], explain: bool = False) -> _SearchResult:
    """Wing & Gong's search with Lowe's memoization over one key's prepared operations."""
    req = [o for o in ops if o.required]
    unk = sorted((o for o in ops if not o.required), key=lambda o: o.invoke)
    # Required operations as call and return entries in time order (a call before a return at the same
    # time: operations that touch are concurrent), in a doubly linked list with sentinels.
    entries: list[tuple[float, int, int]] = []
    for i, o in enumerate(req):
        entries.append((o.invoke, 0, i))
        entries.append((o.complete, 1, i))
    entries.sort()
    n_e = len(entries)
    head, tail, nxt, prv = _linked(n_e)
    is_call = [e[1] == 0 for e in entries]
    e_time = [e[0] for e in entries]
    e_op = [e[2] for e in entries]
    call_of = [0] * len(req)
    ret_of = [0] * len(req)
    for pos, (_t, r, i) in enumerate(entries):
        (ret_of if r else call_of)[i] = pos
    # Unknown operations: a linked list by invocation, with sentinels.
    n_u = len(unk)
    uhead, utail, unxt, uprv = _linked(n_u)
    u_invoke = [o.invoke for o in unk]
    # Operation handles: required i -> i, unknown j -> len(req) + j; one bit each.
    n_req = len(req)
    allops = req + unk
    keeps = [o.kind == _READ or o.outcome != _DONE for o in req]

    def candidates(state: State) -> list[int]:
        cands: list[int] = []
        e = nxt[head]
        while e != tail and is_call[e]:
            h = e_op[e]
            if keeps[h] and _holds(req[h], state):
                return [h]  # it changes nothing and holds now: placing it first is never worse
            cands.append(h)
            e = nxt[e]
        bound = e_time[e] if e != tail else INF
        u = unxt[uhead]
        syms: set[tuple[Any, ...]] = set()
        while u != utail and u_invoke[u] <= bound:
            s = unk[u].sym
            if s is None or s not in syms:
                if s is not None:
                    syms.add(s)
                cands.append(n_req + u)
            u = unxt[u]
        return cands

    def lift(h: int) -> None:
        if h < n_req:
            for e in (call_of[h], ret_of[h]):
                nxt[prv[e]] = nxt[e]
                prv[nxt[e]] = prv[e]
        else:
            u = h - n_req
            unxt[uprv[u]] = unxt[u]
            uprv[unxt[u]] = uprv[u]

    def unlift(h: int) -> None:
        if h < n_req:
            for e in (ret_of[h], call_of[h]):
                nxt[prv[e]] = e
                prv[nxt[e]] = e
        else:
            u = h - n_req
            unxt[uprv[u]] = u
            uprv[unxt[u]] = u

    result = _SearchResult(False, 0)
    best_depth = -1
    cache: set[tuple[int, State]] = set()
    state: State = None
    linearized = 0
    remaining = n_req
    stack: list[tuple[list[int], int, State, int]] = []
    path: list[int] = []
    cands = candidates(state)
    idx = 0
    while True:
        if remaining == 0:
            result.ok = True
            break
        advanced = False
        while idx < len(cands):
            h = cands[idx]
            idx += 1
            o = allops[h]
            new, out = _apply(state, o.kind, o.pairs, o.fields)
            if o.required:
                good = (o.pairs == state) if o.kind == _READ else (out == o.outcome)
                if not good:
                    if explain:
                        seen_states = result.rejected.setdefault(id(o), [])
                        if state not in seen_states and len(seen_states) < 6:
                            seen_states.append(state)
                    continue
            elif new == state:
                continue  # an unknown operation that changes nothing here: leaving it out is the same
            nl = linearized | (1 << h)
            memo = (nl, new)
            if memo in cache:
                continue
            cache.add(memo)
            stack.append((cands, idx, state, h))
            path.append(h)
            lift(h)
            linearized = nl
            state = new
            if o.required:
                remaining -= 1
            cands = candidates(state)
            idx = 0
            advanced = True
            break
        if advanced:
            continue
        if explain:
            depth = n_req - remaining
            if depth > best_depth:
                best_depth = depth
                result.deepest = [allops[h] for h in path]
                result.deepest_state = state
                e = nxt[head]
                while e != tail and is_call[e]:
                    e = nxt[e]
                result.blocked = req[e_op[e]] if e != tail else None
        if not stack:
            break
        cands, idx, state, h = stack.pop()
        path.pop()
        unlift(h)
        linearized &= ~(1 << h)
        if h < n_req:
            remaining += 1
    result.configs = len(cache)
    return result


# --- per key, with the explanation of a violation -------------------------------------------------


def _truncate(ops: Sequence[Op], t: float) -> list[Op]:
    """The history as it stood at time t: later invocations dropped, operations in flight unknown."""
    out: list[Op] = []
    for op in ops:
        if op.invoke_s > t:
            continue
        if op.result == "ok" and op.complete_s is not None and op.complete_s > t:
            op = Op(
                op.process, op.key, op.f, op.value if op.f != "read" else None, op.invoke_s, None, "unknown", op.via
            )
        out.append(op)
    return out


def _linearizable(ops: Sequence[Op]) -> bool:
    prep = _prepare(ops)
    return prep.never_written is None and _search(prep.ops).ok


def _explain(key: str, ops: Sequence[Op]) -> Violation:
    """The earliest completion at which the key's history stops being linearizable, and its window."""
    times = sorted({op.complete_s for op in ops if op.result == "ok" and op.complete_s is not None})
    lo, hi = 0, len(times) - 1  # invariant: truncation at times[hi] fails; before times[lo] it holds
    while lo < hi:
        mid = (lo + hi) // 2
        if _linearizable(_truncate(ops, times[mid])):
            lo = mid + 1
        else:
            hi = mid
    t = times[hi]
    trunc = _truncate(ops, t)
    ops_before = sum(1 for op in ops if op.complete_s is not None and op.complete_s < t and op.result == "ok")
    prep = _prepare(trunc)
    completing = [op for op in ops if op.result == "ok" and op.complete_s == t]
    if prep.never_written is not None:
        read, pair, tried = prep.never_written
        culprit = read  # an ok read completing by t: the same object as in `ops`
        how = "was only tried by operations that did not take effect" if tried else "was never written"
        reason = f"a read returned {pair[0]}={pair[1]}, which {how}"
        window = sorted({id(o): o for o in [culprit, *tried]}.values(), key=lambda o: o.invoke_s)
        return Violation(key, culprit, [], window, reason, ops_before)
    res = _search(prep.ops, explain=True)
    assert not res.ok
    # The culprit: the operation completing at t (the one the search could not place, if several).
    culprit = completing[0]
    for op in completing:
        if res.blocked is not None and res.blocked.src is op:
            culprit = op
    cop = next((c for c in prep.ops if c.src is culprit), None)
    possible = res.rejected.get(id(cop), []) if cop is not None else []
    if culprit.f == "read":
        what = "a read that returned " + ("NOT_FOUND" if culprit.value is None else format_state(_pairs(culprit.value)))
    else:
        what = f"a {culprit.f} that answered {culprit.outcome}"
    if possible:
        reason = f"{what} at a time when no order of the operations allows it"
    else:
        reason = f"{what}: no order of the operations before it leaves a place for it"
    window = _window(ops, culprit, res)
    return Violation(key, culprit, possible, window, reason, ops_before)


def _window(ops: Sequence[Op], culprit: Op, res: _SearchResult, limit: int = 40) -> list[Op]:
    """The culprit, what ran concurrently with it, the writes that set the state before it, and the
    writes of the values it returned."""
    assert culprit.complete_s is not None
    start, end = culprit.invoke_s, culprit.complete_s
    chosen: dict[int, Op] = {id(culprit): culprit}
    for op in ops:  # finished operations concurrent with it
        if op.complete_s is not None and op.invoke_s <= end and op.complete_s >= start:
            chosen[id(op)] = op
    # The last state-changing operations that completed before the culprit was invoked.
    changes = [
        op
        for op in ops
        if op.f != "read"
        and op.result == "ok"
        and op.outcome == "done"
        and op.complete_s is not None
        and op.complete_s < start
    ]
    changes.sort(key=lambda o: o.complete_s or 0.0)
    for op in changes[-2:]:
        chosen[id(op)] = op
    lo = min(op.invoke_s for op in chosen.values())
    for op in ops:  # unknown operations invoked within the window: they may have taken effect in it
        if op.result == "unknown" and lo <= op.invoke_s <= end:
            chosen[id(op)] = op
    # The last acknowledged operations of the longest linearized prefix (what the search settled on).
    for c in [c for c in res.deepest if c.src.result == "ok"][-3:]:
        chosen[id(c.src)] = c.src
    if culprit.value is not None:  # and the writes of the values it returned, however old
        wanted = set(culprit.value.items())
        for op in ops:
            if op.f in ("create", "update") and op.value and wanted & set(op.value.items()):
                chosen[id(op)] = op
    window = sorted(chosen.values(), key=lambda o: (o.invoke_s, o.process))
    if len(window) > limit:  # keep the ones nearest the culprit
        window.sort(key=lambda o: abs(o.invoke_s - start))
        window = sorted(window[:limit], key=lambda o: (o.invoke_s, o.process))
        if culprit not in window:
            window.append(culprit)
    return window


def check_key(key: str, ops: Sequence[Op]) -> KeyResult:
    """Check one key's operations; explain the violation if there is one."""
    t0 = time.perf_counter()
    ordered = sorted(ops, key=lambda o: (o.invoke_s, o.process))
    prep = _prepare(ordered)
    unknown = sum(1 for op in ordered if op.result == "unknown")
    if prep.never_written is None:
        res = _search(prep.ops)
        ok, configs = res.ok, res.configs
    else:
        ok, configs = False, 0
    kr = KeyResult(key, len(ordered), len(prep.ops), unknown, ok, configs, 0.0)
    if not ok:
        kr.violation = _explain(key, ordered)
    kr.seconds = time.perf_counter() - t0
    return kr


def check(history: Iterable[Op]) -> Result:
    """Check each key's history for linearizability (keys are independent objects)."""
    t0 = time.perf_counter()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    result = Result([check_key(k, by_key[k]) for k in sorted(by_key)])
    result.seconds = time.perf_counter() - t0
    return result


# --- statistics ----------------------------------------------------------------------------------


@dataclass
class Bounds:
    low: int
    high: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.low <= self.actual <= self.high


@dataclass
class StatsResult:
    reads: dict[str, Bounds]
    totals: dict[str, Bounds]
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        tot = ", ".join(f"{k} {b.actual} in [{b.low}, {b.high}]" for k, b in self.totals.items())
        exact = sum(1 for b in self.reads.values() if b.low == b.high)
        lines = [
            f"statistics: totals {tot}; {len(self.reads)} users' read counts ({exact} exactly determined): "
            + ("consistent" if self.ok else f"{len(self.problems)} PROBLEM(S)")
        ]
        lines += [f"  {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _counts_an_event(op: Op) -> bool:
    """An ok operation that appended an event: every kind when it did something (`done`); a create
    that found the profile, and an update, delete or read that found none, append nothing."""
    return op.result == "ok" and op.outcome == "done"


def total_bounds(history: Iterable[Op]) -> dict[str, tuple[int, int]]:
    """Per operation type, the bounds on the events the run appended (so on the totals, once aggregated):

    low  = ok operations of that type whose outcome was `done` (each appended exactly one event),
    high = low + unknown operations of that type (each appended one event or none).
    `fail` operations and ok ones answered ALREADY_EXISTS / NOT_FOUND append nothing.
    """
    low = dict.fromkeys(KINDS, 0)
    unknown = dict.fromkeys(KINDS, 0)
    for op in history:
        if _counts_an_event(op):
            low[op.f] += 1
        elif op.result == "unknown":
            unknown[op.f] += 1
    return {k: (low[k], low[k] + unknown[k]) for k in KINDS}


def read_bounds(ops: Sequence[Op], settled_s: float | None = None) -> tuple[int, int]:
    """The bounds on one user's read count once every event is aggregated.

    The aggregator's count is the read events after the user's latest delete event, in stream order;
    stream order is the order the scripts ran, i.e. the linearization order. A read appends its event
    only when it found the profile; a delete only when it removed one. So:

    low  = ok reads that found the profile and certainly ran after every delete that may have run;
    high = ok reads that found it and unknown reads that may have run after the last delete that ran.

    "Certainly after" and "may be after" come from real time and from values. An ok operation ran
    within [invoke_s, complete_s]; an unknown one at any time after invoke_s (before `settled_s`,
    when the caller knows a time after which nothing still in flight can take effect), or never.
    Writes carry unique values, so a read and the write whose value it returned, and two reads that
    returned the same written value, are in one life of the profile (between the same two deletes);
    a life is ordered as a whole against any delete that ran: a delete before one of its members is
    before all of them. A life is *current* when every delete that may have run is certainly before
    it; it is *possibly current* unless it is certainly followed by an ok delete that ran, or by an
    ok operation that found the profile absent (create done, update/delete/read not_found: a delete
    ran in between).
    """
    ub_unknown = INF if settled_s is None else settled_s

    def ub(op: Op) -> float:  # latest time it can have taken effect
        if op.result == "ok":
            assert op.complete_s is not None
            return op.complete_s
        return max(ub_unknown, op.invoke_s)

    effective: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if op.f in ("create", "update") and op.value and (op.result == "unknown" or _counts_an_event(op)):
            for pair in op.value.items():
                effective[pair].append(op)
    # Lives: union-find over found reads and the single writers of the values they returned.
    parent: dict[int, int] = {}
    members: dict[int, Op] = {}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def add(op: Op) -> int:
        parent.setdefault(id(op), id(op))
        members[id(op)] = op
        return id(op)

    found = [op for op in ops if op.f == "read" and op.result == "ok" and op.value is not None]
    for r in found:
        a = add(r)
        for pair in r.value.items() if r.value else ():
            writers = effective.get(pair, [])
            if len(writers) == 1:
                b = add(writers[0])
                parent[find(a)] = find(b)
    lives: dict[int, list[Op]] = defaultdict(list)
    for x in list(parent):
        lives[find(x)].append(members[x])
    deletes_may = [op for op in ops if op.f == "delete" and (op.result == "unknown" or _counts_an_event(op))]
    # Operations that prove a delete ran after everything certainly before them.
    enders = [
        op
        for op in ops
        if op.result == "ok" and (op.outcome == "not_found" or (op.f, op.outcome) == ("create", "done"))
    ]
    enders += [op for op in ops if op.f == "delete" and _counts_an_event(op)]
    ender_invokes = sorted(op.invoke_s for op in enders)

    def ended_after(t: float) -> bool:  # an ender certainly ran after time t
        return bisect.bisect_right(ender_invokes, t) < len(ender_invokes)

    low = high = 0
    for life in lives.values():
        n_reads = sum(1 for op in life if op.f == "read")
        latest_invoke = max(op.invoke_s for op in life)
        earliest_ub = min(ub(op) for op in life)
        if all(ub(d) < latest_invoke for d in deletes_may):
            low += n_reads
        if not ended_after(earliest_ub):
            high += n_reads
    for r in ops:
        if r.f == "read" and r.result == "unknown" and not ended_after(ub(r)):
            high += 1
    return low, high


def check_statistics(
    history: Iterable[Op],
    reads: Mapping[str, int],
    totals: Mapping[str, int],
    *,
    settled_s: float | None = None,
    uncounted_reads_allowed: bool = False,
    baseline_totals: Mapping[str, int] | None = None,
) -> StatsResult:
    """Check the aggregated statistics, read after quiescence, against the history.

    `reads`: each user's read count (ReportingService GetProfileStats; a user missing counts 0);
    `totals`: GetOperationTotals as {create, read, update, delete}, minus `baseline_totals` if the
    system had events before the run. Bounds: `total_bounds` and `read_bounds`. With
    `uncounted_reads_allowed`, read counts below their low bound are notes, not problems: a read does
    not wait for replication, so one served just before its primary died may go uncounted (the
    documented guarantee: never counted twice).
    """
    ops = list(history)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    problems: list[str] = []
    notes: list[str] = []
    tb = total_bounds(ops)
    tot_result: dict[str, Bounds] = {}
    for kind in KINDS:
        actual = totals.get(kind, 0) - (baseline_totals or {}).get(kind, 0)
        b = Bounds(*tb[kind], actual)
        tot_result[kind] = b
        if b.ok:
            continue
        msg = f"total {kind}: {actual} outside [{b.low}, {b.high}] (ok done .. + unknown)"
        (notes if uncounted_reads_allowed and kind == "read" and actual < b.low else problems).append(msg)
    read_result: dict[str, Bounds] = {}
    for user in sorted(set(by_key) | set(reads)):
        lo, hi = read_bounds(by_key.get(user, []), settled_s)
        b = Bounds(lo, hi, reads.get(user, 0))
        read_result[user] = b
        if not b.ok:
            msg = f"user {user!r}: read count {b.actual} outside [{lo}, {hi}]"
            (notes if uncounted_reads_allowed and b.actual < lo else problems).append(msg)
    return StatsResult(read_result, tot_result, problems, notes)


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.jepsen.checker", description=__doc__.splitlines()[0])
    parser.add_argument("history", help="JSON lines, one operation each (tests/jepsen/history.py)")
    parser.add_argument(
        "--stats",
        help='JSON {"reads": {user: n}, "totals": {kind: n}, optional "baseline_totals", "settled_s",'
        ' "uncounted_reads_allowed"}: check the statistics against the history too',
    )
    args = parser.parse_args(argv)
    history = load(args.history)
    result = check(history)
    print(result.summary())
    ok = result.ok
    if args.stats:
        with open(args.stats, encoding="utf-8") as f:
            stats = json.load(f)
        sres = check_statistics(
            history,
            stats.get("reads", {}),
            stats.get("totals", {}),
            settled_s=stats.get("settled_s"),
            uncounted_reads_allowed=bool(stats.get("uncounted_reads_allowed", False)),
            baseline_totals=stats.get("baseline_totals"),
        )
        print(sres.summary())
        ok = ok and sres.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
