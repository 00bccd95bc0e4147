"""The consistency model's figures: one recorded run per durability setting and fault, each checked.

    .venv/bin/python -m tests.jepsen.matrix [--duration-s 40] [--out matrix-results]

For each cell it checks, with tests/jepsen/checker.py, the whole history (linearizable reads and writes),
the history without reads (linearizable writes), the writes with only the reads made after the last
fault healed (no acknowledged write lost: what the shard kept agrees with what it acknowledged), and the
statistics. It prints the table docs/architecture.md shows and writes matrix.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tests.jepsen import harness, history
from tests.jepsen.history import Op
from tests.jepsen.nemesis import load_faults
from tests.jepsen.verify import counted_reads

CELLS = {
    "kill": "kill",
    "pause": "pause",
    "partition": "partition-primary,partition-shard",
    "shard down": "shard-down",
}
SETTINGS = [("none", ""), ("local", ""), ("replica", ""), ("replica", "replica")]


def check_cell(out: Path) -> dict[str, object]:
    from tests.jepsen import checker  # the checker module (tests/jepsen/checker.py)

    ops = history.load(out / "history.jsonl")
    faults = load_faults(out / "faults.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    healed = max((fault.healthy_s for fault in faults), default=0.0)
    writes = [op for op in ops if op.f != "read"]
    settled_reads = [op for op in ops if op.f == "read" and op.invoke_s > healed]
    full = checker.check(ops)
    only_writes = checker.check(writes)
    kept = checker.check(_acknowledged_changes(writes) + settled_reads)
    counted = checker.check_statistics(ops, counted_reads(stats), stats["totals"])
    return {
        "ops": len(ops),
        "unknown": sum(op.result == "unknown" for op in ops),
        "faults": len(faults),
        "linearizable_writes": bool(only_writes.ok),
        "linearizable_reads": bool(full.ok),
        "no_acknowledged_write_lost": bool(kept.ok),
        "statistics_exact": bool(counted.ok),
        "explanation": "" if full.ok and counted.ok else f"{full.summary()}\n{counted.summary()}"[:4000],
        "summary": {k: summary[k] for k in ("ok", "fail", "faults_by_kind", "duration_s")},
    }


def _acknowledged_changes(writes: list[Op]) -> list[Op]:
    """The changes that took effect for sure or may have: no-op answers (ALREADY_EXISTS, NOT_FOUND) are
    observations, not changes, so they are left out; unknown ones stay (they may have happened)."""
    return [op for op in writes if op.result == "unknown" or (op.result == "ok" and op.outcome == "done")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("matrix-results"))
    parser.add_argument("--duration-s", type=float, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", default="", help="durability[/read-check] values to run, comma-separated")
    args = parser.parse_args(argv)
    problem = harness.available()
    if problem:
        print(f"can't run here: {problem}", file=sys.stderr)
        return 2
    results_path = args.out.resolve() / "matrix.json"
    results: dict[str, dict[str, object]] = json.loads(results_path.read_text()) if results_path.exists() else {}
    wanted = {item for item in args.only.split(",") if item}
    for durability, read_check in SETTINGS:
        setting = durability + (f"/{read_check}" if read_check else "")
        if wanted and setting not in wanted:
            continue
        for cell, faults in CELLS.items():
            out = args.out.resolve() / setting.replace("/", "-") / cell.replace(" ", "-")
            run_args = ["--seed", str(args.seed), "--duration-s", str(args.duration_s), "--faults", faults]
            run_args += ["--durability", durability] + (["--read-check", read_check] if read_check else [])
            try:
                harness.record(out, *run_args, timeout_s=args.duration_s * 4 + 600)
            except subprocess.CalledProcessError as error:
                print(f"{setting} {cell}: the run failed:\n{error.output}", file=sys.stderr)
                continue
            results[f"{setting} {cell}"] = check_cell(out)
            print(
                setting, cell, json.dumps({k: v for k, v in results[f"{setting} {cell}"].items() if k != "explanation"})
            )
            results_path.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


def table(results: dict[str, dict[str, object]]) -> str:
    def mark(value: object) -> str:
        return "yes" if value else "**no**"

    lines = [
        "| setting | fault | ops (unknown) | faults | linearizable writes | linearizable reads | "
        "no acknowledged write lost | statistics exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, cell in results.items():
        setting, fault = name.split(" ", 1)
        lines.append(
            f"| {setting} | {fault} | {cell['ops']:,} ({cell['unknown']:,}) | {cell['faults']} | "
            f"{mark(cell['linearizable_writes'])} | {mark(cell['linearizable_reads'])} | "
            f"{mark(cell['no_acknowledged_write_lost'])} | {mark(cell['statistics_exact'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
