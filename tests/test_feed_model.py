"""The change feed against its model: seeded random schedules of writes, takes, trims with a retention
window, tail-reader stalls, lossy failovers (with and without ids handed out again), subscribers with and
without filters that die and resume from earlier tokens, and forged tokens (tests/feed_model.py).

Two processes share the seeds, each with a node of its own. Every schedule must hold: each subscriber's events an exact continuation of its partition's history from
its token, or the documented status, justified. A failing seed replays with
`python -m tests.feed_model --seed N -v`.
"""

from __future__ import annotations

import os

from tests.feed_model import CLASSES, run_parallel

RUNS = int(os.environ.get("PROFILEMESH_FEED_MODEL_RUNS", "2000"))
FIRST_SEED = int(os.environ.get("PROFILEMESH_FEED_MODEL_FIRST_SEED", "0"))
# Shorter schedules than the command's (14-26 steps), so that 2,000 of them fit CI's time.
STEPS = (6, 10)


def test_every_schedule_continues_exactly_or_ends_with_a_justified_status() -> None:
    summary = run_parallel(list(range(FIRST_SEED, FIRST_SEED + RUNS)), STEPS)
    print(summary.report())
    assert not summary.failed, (
        f"{len(summary.failed)} of {summary.runs} schedules failed "
        f"({', '.join(f'defect {d} ({CLASSES[d]}): {n}' for d, n in sorted(summary.by_class().items()))}); "
        f"replay one with `python -m tests.feed_model --seed N -v`\n{summary.report()}"
    )
