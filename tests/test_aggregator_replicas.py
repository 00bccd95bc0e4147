"""Aggregator replicas share the partitions (aggregator_svc/aggregator.py: a heartbeat in the cluster, rendezvous
hashing) rather than each reading every one, and a replica that dies has its share taken over.

At 4,096 partitions: two replicas split them; one SIGKILLed, the other consumes all of them within the claim
interval (a replica's word holds for three heartbeats of a quarter of it); the counts stay exact throughout, and
neither warns of anything once serving.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from localdev.ports import free_ports
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import TEST_SETTINGS, running_system
from tests.helpers import creates_counted, metric_sum, wait_until

PARTITIONS = 4096
CLAIM_IDLE_S = 2  # TEST_SETTINGS' PROFILEMESH_AGGREGATOR_CLAIM_IDLE_MS
SECOND = "aggregator_svc-2"


@pytest.fixture(scope="module")
def wide_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    settings = {**TEST_SETTINGS, "PROFILEMESH_PARTITIONS": str(PARTITIONS)}
    assert settings["PROFILEMESH_AGGREGATOR_CLAIM_IDLE_MS"] == str(CLAIM_IDLE_S * 1000)
    with running_system(tmp_path_factory.mktemp("replicas"), settings) as system:
        yield system


def _owned(system: System, name: str) -> float:
    return metric_sum(system.metrics_url(name), "profilemesh_aggregator_partitions_owned")


def _log(system: System, name: str) -> list[dict[str, str]]:
    """A replica's log records (JSON lines), in order."""
    return [json.loads(line) for line in (system.log_dir / f"{name}.log").read_text().splitlines()]


def _at(record: dict[str, str]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


def _took_over_at(system: System) -> float:
    """When the survivor said it consumes every partition, by its log's clock: seen through its metrics, the
    moment comes later by however long a scrape of 4,096 partitions' series takes on two cores."""
    for record in reversed(_log(system, "aggregator_svc")):
        if record["message"].startswith(f"consuming {PARTITIONS} of {PARTITIONS} partitions"):
            return _at(record)
    raise AssertionError("the survivor never said it consumes every partition")


def _shares_before(system: System, name: str, moment: float) -> list[str]:
    """The shares a replica said it took before `moment` (by its log's clock)."""
    return [r["message"] for r in _log(system, name) if r["message"].startswith("consuming ") and _at(r) < moment]


def _warnings_once_serving(system: System, name: str) -> list[str]:
    """What a replica warned of once it served: nothing, on a healthy cluster. At 4,096 partitions its partitions'
    loops start then, with a call each at once, and each that waits past its deadline is a warning and a retry.
    (Before, a replica started with the cluster may say it can't check the partition count yet: it waits.)"""
    records = _log(system, name)
    serving = next(i for i, r in enumerate(records) if r["message"] == "health: SERVING")
    return [r["message"] for r in records[serving:] if r["level"] in ("WARNING", "ERROR", "CRITICAL")]


def _create(system: System, users: list[str]) -> None:
    stub = profile_pb2_grpc.ProfileServiceStub(system.grpc_channel(system.profile_port))
    for user in users:
        stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"email": "r@example.com"}), timeout=10)


def test_two_replicas_split_the_partitions_and_one_takes_over_the_share_of_one_killed(wide_system: System) -> None:
    system = wide_system
    (port,) = free_ports(1)
    system.start_process(SECOND, "aggregator_svc", PROFILEMESH_AGGREGATOR_LISTEN=f"127.0.0.1:{port}")
    wait_until(lambda: system.grpc_status(port) == "SERVING", timeout_s=60, what="the second replica to serve")
    wait_until(
        lambda: (
            _owned(system, "aggregator_svc") + _owned(system, SECOND) == PARTITIONS
            and min(_owned(system, "aggregator_svc"), _owned(system, SECOND)) > PARTITIONS / 3
        ),
        timeout_s=30,
        what="the two replicas to split the partitions",
    )
    shares = (_owned(system, "aggregator_svc"), _owned(system, SECOND))
    print(f"shares of {PARTITIONS} partitions: {shares[0]:.0f} and {shares[1]:.0f}")

    before = [f"split-{n}" for n in range(300)]
    _create(system, before)
    wait_until(lambda: creates_counted(system, PARTITIONS) == len(before), what="the creates counted by both")

    killed = time.time()
    system.processes[SECOND].send_signal(signal.SIGKILL)
    system.processes[SECOND].wait(timeout=10)
    wait_until(lambda: _owned(system, "aggregator_svc") == PARTITIONS, timeout_s=4 * CLAIM_IDLE_S, what="the takeover")
    took_over_s = _took_over_at(system) - killed
    # Until the kill, neither took the other for dead: one split each, as the second started, and no other.
    for name in ("aggregator_svc", SECOND):
        assert [share.endswith("2 replicas live") for share in _shares_before(system, name, killed)] == [True], name
    print(f"the survivor consumed all {PARTITIONS} partitions {took_over_s:.2f} s after the kill")
    assert took_over_s <= CLAIM_IDLE_S + 1, f"took {took_over_s:.2f} s; the claim interval is {CLAIM_IDLE_S} s"

    after = [f"after-{n}" for n in range(300)]
    _create(system, after)
    wait_until(
        lambda: creates_counted(system, PARTITIONS) == len(before) + len(after), what="the survivor to count the rest"
    )
    time.sleep(1)
    assert creates_counted(system, PARTITIONS) == len(before) + len(after), "each create counted once"
    warned = {name: _warnings_once_serving(system, name) for name in ("aggregator_svc", SECOND)}
    assert warned == {"aggregator_svc": [], SECOND: []}, {name: (len(w), w[:3]) for name, w in warned.items()}
