"""An idle partition waits for a wake-up by sharded pub/sub (common/storage/wakes.py), not a blocking read.

On a system whose idle check (the quiet-check interval) is a minute away: an event in an idle partition is
counted at once only if its script's wake-up reached the aggregator, so these tests tell a wake-up from the
idle check. The aggregator holds one subscription per primary and no blocking read; a subscription killed
under it is made again, and what was published meanwhile is looked for, not lost.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from common.storage import acl, keys
from localdev.faults import primary_of
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import TEST_SETTINGS, running_system
from tests.helpers import creates_counted, wait_until

IDLE_CHECK_S = 600  # far beyond any wait below: a count within WAIT_S came by a wake-up
WAIT_S = 20
WAKE_PARTITIONS = 256
SETTINGS = {
    **TEST_SETTINGS,
    "PROFILEMESH_PARTITIONS": str(WAKE_PARTITIONS),
    "PROFILEMESH_AGGREGATOR_MAINTENANCE_S": str(IDLE_CHECK_S),
    "PROFILEMESH_AGGREGATOR_QUIET_CHECK_S": str(IDLE_CHECK_S),
}


@pytest.fixture(scope="module")
def idle_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("wakes"), SETTINGS) as system:
        yield system


def _aggregator_connections(system: System) -> list[dict[str, str]]:
    """CLIENT LIST rows of the aggregator's user, on every primary."""
    rows = []
    for index in range(len(system.cluster.ports)):
        for row in system.cluster.node(index).client_list():
            if row.get("user") == acl.USERS["aggregator_svc"]:
                rows.append({**row, "node": str(index)})
    return rows


def _armed(system: System) -> set[int]:
    client = system.cluster.client(decode_responses=True)
    try:
        return {p for p in range(WAKE_PARTITIONS) if client.get(keys.wake_key(p)) == "1"}
    finally:
        client.close()


def _create(system: System, user: str) -> None:
    stub = profile_pb2_grpc.ProfileServiceStub(system.grpc_channel(system.profile_port))
    stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"email": "w@example.com"}), timeout=10)


def test_idle_partitions_hold_a_subscription_per_primary_and_no_blocking_read(idle_system: System) -> None:
    wait_until(lambda: _armed(idle_system) == set(range(WAKE_PARTITIONS)), what="every partition idle and armed")
    rows = _aggregator_connections(idle_system)
    subscribers = [row for row in rows if int(row.get("ssub", 0))]
    print(f"aggregator: {len(rows)} connections for {WAKE_PARTITIONS} partitions, {len(subscribers)} subscribed")
    assert sum(int(row["ssub"]) for row in subscribers) == WAKE_PARTITIONS, "each partition's channel, once"
    assert len({row["node"] for row in subscribers}) == len(subscribers) == 3, "one subscription per primary"
    assert not [row for row in rows if "b" in row["flags"]], "no blocking read"
    assert len(rows) < WAKE_PARTITIONS


def test_an_event_in_an_idle_partition_wakes_it(idle_system: System) -> None:
    wait_until(lambda: _armed(idle_system) == set(range(WAKE_PARTITIONS)), what="every partition idle and armed")
    before = creates_counted(idle_system, WAKE_PARTITIONS)
    for n in range(WAKE_PARTITIONS):
        _create(idle_system, f"wake-{n}")
    wait_until(lambda: creates_counted(idle_system, WAKE_PARTITIONS) == before + WAKE_PARTITIONS, timeout_s=WAIT_S)


def test_a_subscription_killed_under_the_aggregator_is_made_again_and_nothing_waits(idle_system: System) -> None:
    """The connection of one primary's subscription killed while the aggregator is stopped (SIGSTOP), and events
    appended to that primary's partitions meanwhile, their wake-ups published to no one: once it runs again it
    subscribes again and looks at every partition of the subscription, so they are counted without waiting for
    the idle check."""
    wait_until(lambda: _armed(idle_system) == set(range(WAKE_PARTITIONS)), what="every partition idle and armed")
    victim = primary_of(idle_system.cluster, keys.wake_key(0))
    node = idle_system.cluster.node(victim)
    (subscriber,) = [r for r in _aggregator_connections(idle_system) if r["node"] == str(victim) and int(r["ssub"])]
    users = [f"after-kill-{n}" for n in range(40)]
    users = [
        u
        for u in users
        if primary_of(idle_system.cluster, keys.wake_key(keys.partition_of(u, WAKE_PARTITIONS))) == victim
    ]
    before = creates_counted(idle_system, WAKE_PARTITIONS)
    aggregator = idle_system.processes["aggregator_svc"]
    aggregator.send_signal(signal.SIGSTOP)
    try:
        node.client_kill_filter(_id=subscriber["id"])
        for user in users:
            _create(idle_system, user)
    finally:
        aggregator.send_signal(signal.SIGCONT)
    wait_until(lambda: creates_counted(idle_system, WAKE_PARTITIONS) == before + len(users), timeout_s=WAIT_S)
    wait_until(
        lambda: [r for r in _aggregator_connections(idle_system) if r["node"] == str(victim) and int(r["ssub"])],
        what="the subscription made again",
    )
