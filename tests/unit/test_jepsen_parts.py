"""The recorder's parts that need no cluster: the history format, what an answer proves, the firewall guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.jepsen import history, nemesis
from tests.jepsen.clients import NOT_RUN_REASONS, _rest_reason


def test_a_history_survives_a_dump_and_a_load(tmp_path: Path) -> None:
    ops = [
        history.Op(0, "user0", "create", {"v": "w1"}, 0.1, 0.2, "ok", via="grpc", outcome="done"),
        history.Op(1, "user0", "read", None, 0.15, 1.2, "unknown", via="rest", error="DEADLINE_EXCEEDED"),
    ]
    with (tmp_path / "history.jsonl").open("w") as file:
        history.dump(ops, file)
    assert history.load(tmp_path / "history.jsonl") == ops


def test_only_reasons_that_prove_nothing_ran_make_a_failure() -> None:
    def body(reason: str) -> bytes:
        return json.dumps({"message": "m", "details": [{"reason": reason, "domain": "profilemesh"}]}).encode()

    assert _rest_reason(body("NO_REPLICA")) in NOT_RUN_REASONS
    assert _rest_reason(body("PARTITION_UNAVAILABLE")) in NOT_RUN_REASONS
    assert _rest_reason(body("OUTCOME_UNKNOWN")) not in NOT_RUN_REASONS
    assert _rest_reason(body("CLUSTER_UNAVAILABLE")) not in NOT_RUN_REASONS
    assert _rest_reason(b"not json") == ""


def test_the_nemesis_refuses_to_touch_a_firewall_outside_its_own_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(nemesis.NAMESPACE_VARIABLE, raising=False)
    with pytest.raises(RuntimeError, match="outside the run's own network namespace"):
        nemesis.nft("list", "ruleset")
    # Naming a namespace is not enough: this process must be in it.
    monkeypatch.setenv(nemesis.NAMESPACE_VARIABLE, "no-such-namespace")
    with pytest.raises(RuntimeError):
        nemesis.nft("list", "ruleset")
