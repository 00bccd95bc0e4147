"""`make verify`: a long recorded run in a namespace of its own, checked, with a summary and a timeline.

    .venv/bin/python -m tests.jepsen.verify [--duration-s 600] [--min-faults 50] [--out verify-results]

Writes to the results folder: history.jsonl, faults.jsonl, stats.json, summary.json, summary.md
(figures and the checker's verdicts) and timeline.html (operations and faults over time). Exits 1 when
the checker finds a violation (its window is printed), 2 when the run itself failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.jepsen import harness, history, timeline
from tests.jepsen.nemesis import FAULTS, load_faults


@dataclass
class Verdict:
    ok: bool
    linearizable: str  # the checker's explanation
    statistics: str
    summary: dict[str, object]


def judge(out: Path) -> Verdict:
    """The checker's verdicts on a recorded run: linearizability per key, and the statistics."""
    from tests.jepsen import checker  # the checker module (tests/jepsen/checker.py)

    ops = history.load(out / "history.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    started = time.monotonic()
    linear = checker.check(ops)
    stat = checker.check_statistics(ops, counted_reads(stats), stats["totals"])
    summary["check_s"] = round(time.monotonic() - started, 1)
    summary["linearizable"] = bool(linear.ok)
    summary["statistics_exact"] = bool(stat.ok)
    return Verdict(bool(linear.ok and stat.ok), linear.summary(), stat.summary(), summary)


def counted_reads(stats: dict[str, Any]) -> dict[str, int]:
    """Each user's read count; a user reporting_svc has no statistics for (NOT_FOUND) counts 0."""
    return {user: count or 0 for user, count in stats["reads"].items()}


def report(out: Path, verdict: Verdict, title: str) -> None:
    """summary.md and timeline.html beside the history."""
    s = verdict.summary
    lines = [
        f"{s['ops']} operations ({s['ok']} ok, {s['fail']} failed, {s['unknown']} unknown) in {s['duration_s']} s, "
        f"durability {s['durability']}{', read check ' + str(s['read_check']) if s.get('read_check') else ''}",
        f"{s['faults']} faults: " + ", ".join(f"{k} {v}" for k, v in dict(s["faults_by_kind"]).items()),  # type: ignore[call-overload]  # JSON object
        f"by function: {s['by_function']}; by client: {s['by_via']}",
        f"linearizable: {'yes' if s['linearizable'] else 'NO'}; statistics exact: "
        f"{'yes' if s['statistics_exact'] else 'NO'} (checked in {s['check_s']} s)",
    ]
    if s.get("unexpected_answers"):
        lines.append(f"unexpected answers: {s['unexpected_answers']}")
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    (out / "summary.md").write_text(
        f"# {title}\n\n"
        + "".join(f"- {line}\n" for line in lines)
        + f"\n## Linearizability\n\n```\n{verdict.linearizable}\n```\n\n## Statistics\n\n```\n{verdict.statistics}\n```\n"
    )
    page = timeline.render(history.load(out / "history.jsonl"), load_faults(out / "faults.jsonl"), title, lines)
    (out / "timeline.html").write_text(page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("verify-results"))
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--duration-s", type=float, default=600)
    parser.add_argument("--min-faults", type=int, default=50)
    parser.add_argument("--durability", default="replica", choices=("none", "local", "replica"))
    parser.add_argument("--faults", default=",".join(FAULTS))
    # The read check on: the setting whose model is linearizable (docs/architecture.md); "" or none: off.
    parser.add_argument("--read-check", default="replica")
    parser.add_argument("--rate", type=float, default=120)
    args = parser.parse_args(argv)
    problem = harness.available()
    if problem:
        print(f"make verify can't run here: {problem}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    run_args = [
        *("--seed", str(args.seed), "--duration-s", str(args.duration_s), "--min-faults", str(args.min_faults)),
        *("--durability", args.durability, "--faults", args.faults, "--rate", str(args.rate)),
        *(("--read-check", args.read_check) if args.read_check not in ("", "none") else ()),
    ]
    print(f"recording (seed {args.seed}, {args.duration_s:.0f} s, >= {args.min_faults} faults) into {out}", flush=True)
    try:
        harness.record(out, *run_args, timeout_s=args.duration_s * 3 + 900)
    except subprocess.CalledProcessError as error:
        print(f"the run failed:\n{error.output}", file=sys.stderr)
        return 2
    verdict = judge(out)
    report(out, verdict, f"make verify, seed {args.seed}")
    print((out / "summary.md").read_text())
    print(f"timeline: {out / 'timeline.html'}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
