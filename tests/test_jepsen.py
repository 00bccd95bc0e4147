"""A short recorded run under every fault, checked: CI's share of tests/jepsen (`make verify` is the long one).

The whole system runs inside a network namespace the harness makes and deletes (tests/jepsen/harness.py);
partitions are nftables rules in there only. A violation fails the test with the checker's window.
"""

from __future__ import annotations

from pathlib import Path

from tests.jepsen import harness, verify
from tests.jepsen.nemesis import FAULTS


def test_histories_under_every_fault_are_linearizable_and_counted(tmp_path: Path) -> None:
    problem = harness.available()
    assert not problem, f"the jepsen run needs root and nft (make nftables): {problem}"
    out = tmp_path / "run"
    # One cycle of every fault; durability replica with the read check, the setting whose model is linearizable.
    harness.record(out, "--seed", "19", "--duration-s", "35", "--read-check", "replica", timeout_s=600)
    verdict = verify.judge(out)
    verify.report(out, verdict, "CI run, seed 19")
    summary = verdict.summary
    assert all(summary["faults_by_kind"].get(kind, 0) >= 1 for kind in FAULTS), summary["faults_by_kind"]  # type: ignore[attr-defined]  # a JSON object
    assert summary["ops"] > 1000, summary
    assert not summary["unexpected_answers"], summary["unexpected_answers"]
    assert verdict.ok, (
        f"{(out / 'summary.md').read_text()}\nlinearizability:\n{verdict.linearizable}\n"
        f"statistics:\n{verdict.statistics}"
    )
