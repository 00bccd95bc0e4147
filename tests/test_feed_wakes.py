"""The change feed's tail readers wait per node, not per partition: wake-ups by sharded pub/sub.

A profile_svc with a live WatchProfileEvents subscriber at 1,024 partitions holds a subscription per primary,
no blocking read, and far fewer connections than partitions; and still delivers every event promptly. The
feed's sweep (PROFILEMESH_STREAM_QUIET_CHECK_S) and the aggregator's checks are ten minutes away and the
aggregator is stopped (its takes arm the same flags), so an event delivered within WAIT_S came by a wake-up
that the feed armed itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from common.storage import acl, keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import TEST_SETTINGS, running_system
from tests.helpers import wait_until

PARTITIONS = 1024
CHECK_S = 600  # far beyond any wait below: an event delivered within WAIT_S came by a wake-up
WAIT_S = 15
SETTINGS = {
    **{name: value for name, value in TEST_SETTINGS.items() if name != "PROFILEMESH_EVENTS_RETENTION_S"},
    "PROFILEMESH_PARTITIONS": str(PARTITIONS),
    "PROFILEMESH_STREAM_QUIET_CHECK_S": str(CHECK_S),
    "PROFILEMESH_AGGREGATOR_MAINTENANCE_S": str(CHECK_S),
    "PROFILEMESH_AGGREGATOR_QUIET_CHECK_S": str(CHECK_S),
}


@pytest.fixture(scope="module")
def feed_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("feed-wakes"), SETTINGS) as system:
        system.stop_process("aggregator_svc")  # only the feed arms the wake flags from now on
        yield system


class Subscriber:
    """A WatchProfileEvents stream read on a thread of its own: the users of its events, as they arrive."""

    def __init__(self, system: System) -> None:
        self.channel = system.grpc_channel(system.profile_port)
        stub = profile_pb2_grpc.ProfileServiceStub(self.channel)
        self.call: Any = stub.WatchProfileEvents(profile_pb2.WatchProfileEventsRequest())
        self.users: list[str] = []  # of each event, in order
        self.error: grpc.RpcError | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.started.wait(WAIT_S), "the stream's first message (a heartbeat) came"

    def _read(self) -> None:
        try:
            for message in self.call:
                self.started.set()
                if message.HasField("event"):
                    self.users.append(message.event.user)
        except grpc.RpcError as error:
            self.error = error

    def has(self, users: list[str]) -> bool:
        assert self.error is None or self.error.code() == grpc.StatusCode.CANCELLED, self.error
        return set(users) <= set(self.users)

    def count(self, user: str) -> int:
        assert self.error is None or self.error.code() == grpc.StatusCode.CANCELLED, self.error
        return self.users.count(user)

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)
        self.channel.close()


@pytest.fixture
def subscriber(feed_system: System) -> Iterator[Subscriber]:
    watching = Subscriber(feed_system)
    try:
        yield watching
    finally:
        watching.close()


def _profile_connections(system: System) -> list[dict[str, str]]:
    """CLIENT LIST rows of profile_svc's user, on every node."""
    rows = []
    for index in range(len(system.cluster.ports)):
        for row in system.cluster.node(index).client_list():
            if row.get("user") == acl.USERS["profile_svc"]:
                rows.append({**row, "node": str(index)})
    return rows


def _armed(system: System, partitions: list[int]) -> bool:
    client = system.cluster.client(decode_responses=True)
    try:
        return all(client.get(keys.wake_key(p)) == "1" for p in partitions)
    finally:
        client.close()


def _users_in(partitions: list[int], prefix: str) -> dict[int, str]:
    """A user name per partition, each in its own."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < len(partitions):
        user = f"{prefix}-{n}"
        partition = keys.partition_of(user, PARTITIONS)
        if partition in partitions and partition not in found:
            found[partition] = user
        n += 1
    return found


def _create(stub: profile_pb2_grpc.ProfileServiceStub, user: str) -> None:
    stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"email": "f@example.com"}), timeout=10)


def _update(stub: profile_pb2_grpc.ProfileServiceStub, user: str, value: str) -> None:
    stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields={"email": value}), timeout=10)


def test_a_subscriber_costs_a_subscription_per_primary_not_a_connection_per_partition(
    feed_system: System, subscriber: Subscriber, unique: str
) -> None:
    stub = profile_pb2_grpc.ProfileServiceStub(feed_system.grpc_channel(feed_system.profile_port))
    # Events on half the partitions: each is read once woken, then armed again.
    users = list(_users_in(list(range(0, PARTITIONS, 2)), unique).values())
    for user in users:
        _create(stub, user)
    wait_until(lambda: subscriber.has(users), timeout_s=WAIT_S, what="every event delivered by wake-ups")
    rows = _profile_connections(feed_system)
    subscribed = [row for row in rows if int(row.get("ssub", 0))]
    blocked = [row for row in rows if "b" in row["flags"]]
    print(f"profile_svc: {len(rows)} connections for {PARTITIONS} partitions, {len(subscribed)} subscribed")
    assert not blocked, "no blocking read"
    assert sum(int(row["ssub"]) for row in subscribed) == PARTITIONS, "each partition's channel, once"
    assert len({row["node"] for row in subscribed}) == len(subscribed) == 3, "one subscription per primary"
    # A few per node, whatever the partitions: the subscription, the shared pipelines, the handlers' commands.
    assert len(rows) < 40


def test_an_event_in_a_partition_idle_and_armed_is_delivered_and_so_is_the_next(
    feed_system: System, subscriber: Subscriber, unique: str
) -> None:
    stub = profile_pb2_grpc.ProfileServiceStub(feed_system.grpc_channel(feed_system.profile_port))
    partitions = [1, 333, 1023]
    users = _users_in(partitions, unique)
    for user in users.values():
        _create(stub, user)
    wait_until(lambda: all(subscriber.count(u) == 1 for u in users.values()), timeout_s=WAIT_S, what="created")
    for round_ in range(3):  # each event uses the flag: the next one needs the feed to have armed it again
        wait_until(lambda: _armed(feed_system, partitions), timeout_s=WAIT_S, what="the partitions armed again")
        time.sleep(0.5)  # idle for a while
        for user in users.values():
            _update(stub, user, f"round-{round_}@example.com")
        wait_until(
            lambda round_=round_: all(subscriber.count(u) == round_ + 2 for u in users.values()),
            timeout_s=WAIT_S,
            what=f"round {round_} delivered",
        )


def test_the_last_event_of_every_burst_arrives(feed_system: System, subscriber: Subscriber, unique: str) -> None:
    """Bursts of concurrent updates of one user (one partition): the feed's reads and its arming race the
    writes. An event appended between a read that found nothing new and the arming of the flag would publish
    nothing and wait for the sweep; each burst's events must all arrive by wake-ups."""
    stub = profile_pb2_grpc.ProfileServiceStub(feed_system.grpc_channel(feed_system.profile_port))
    partition = 7
    [user] = _users_in([partition], unique).values()
    _create(stub, user)
    expected = 1
    for burst in range(40):
        writers = [threading.Thread(target=_update, args=(stub, user, f"{burst}-{i}@example.com")) for i in range(12)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        expected += len(writers)
        wait_until(
            lambda expected=expected: subscriber.count(user) == expected,
            timeout_s=WAIT_S,
            what=f"burst {burst}: {expected} events delivered",
        )
