"""Every successful profile operation appends exactly one event, atomically; failed ones append none;
the events of a user appear in the order of its operations."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

import grpc
from redis.cluster import RedisCluster

from common.storage import keys
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import PARTITIONS, events_of
from tests.helpers import wait_until

OK = grpc.StatusCode.OK
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TIMEOUT_S = 20

# (operation, fields, expected status). Every OK operation must leave one event of its type.
SCRIPT: list[tuple[str, dict[str, str] | None, grpc.StatusCode]] = [
    ("get", None, NOT_FOUND),
    ("update", {"a": "1"}, NOT_FOUND),
    ("delete", None, NOT_FOUND),
    ("create", {"email": "first@example.com"}, OK),
    ("create", {"email": "second@example.com"}, ALREADY_EXISTS),
    ("get", None, OK),
    ("get", None, OK),
    ("update", {"city": "Lisbon"}, OK),
    ("update", {}, INVALID),
    ("update", {"bad name": "x"}, INVALID),
    ("get", None, OK),
    ("delete", None, OK),
    ("get", None, NOT_FOUND),
    ("delete", None, NOT_FOUND),
    ("update", {"city": "Porto"}, NOT_FOUND),
    ("create", {"email": "again@example.com"}, OK),
    ("create", {"email": "again@example.com"}, ALREADY_EXISTS),
    ("get", None, OK),
]
EVENT_TYPE = {"get": "read", "create": "create", "update": "update", "delete": "delete"}


async def call(
    stub: profile_pb2_grpc.ProfileServiceStub, op: str, user: str, fields: dict[str, str] | None = None
) -> tuple[grpc.StatusCode, object]:
    """One RPC; returns its status code (OK or the error's) and the reply."""
    requests: dict[str, Callable[[], Awaitable]] = {
        "create": lambda: stub.CreateProfile(
            profile_pb2.CreateProfileRequest(user=user, fields=fields), timeout=TIMEOUT_S
        ),
        "get": lambda: stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=TIMEOUT_S),
        "update": lambda: stub.UpdateProfile(
            profile_pb2.UpdateProfileRequest(user=user, fields=fields), timeout=TIMEOUT_S
        ),
        "delete": lambda: stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=TIMEOUT_S),
    }
    try:
        return OK, await requests[op]()
    except grpc.aio.AioRpcError as error:
        return error.code(), None


def full_events(client: RedisCluster, user: str) -> list[tuple[str, dict[str, str]]]:
    stream = keys.events_key(keys.partition_of(user, PARTITIONS))
    return [(entry_id, fields) for entry_id, fields in client.xrange(stream) if fields.get("user") == user]


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def test_each_successful_operation_has_one_event_in_order(
    system: System, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    users = [f"{unique}-u{i}" for i in range(6)]
    bystander = f"{unique}-never"  # only ever failed operations
    start_ms = int(time.time() * 1000)

    async def run_user(stub: profile_pb2_grpc.ProfileServiceStub, user: str) -> list[str]:
        """Runs SCRIPT for one user, checking each outcome; returns the expected event types."""
        expected: list[str] = []
        fields_now: dict[str, str] = {}
        for op, fields, status in SCRIPT:
            got, reply = await call(stub, op, user, fields)
            assert got == status, (user, op, fields, got)
            if got != OK:
                continue
            expected.append(EVENT_TYPE[op])
            if op == "create":
                fields_now = dict(fields or {})
            elif op == "update":
                fields_now.update(fields or {})
            elif op == "get":
                assert dict(reply.fields) == fields_now and reply.user == user
        return expected

    async def run() -> list[list[str]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            for op in ("get", "update", "delete"):
                assert (await call(stub, op, bystander, {"a": "b"}))[0] == NOT_FOUND
            # Invalid names never reach the cluster.
            for bad in ("", " x", ".x", "x" * 129):
                assert (await call(stub, "create", bad, {"a": "b"}))[0] == INVALID
            # The users run concurrently, each one's operations in sequence.
            return await asyncio.gather(*(run_user(stub, user) for user in users))

    expected_by_user = asyncio.run(run())
    end_ms = int(time.time() * 1000)

    for user, expected in zip(users, expected_by_user, strict=True):
        assert expected == ["create", "read", "read", "update", "read", "delete", "create", "read"]
        events = full_events(redis_client, user)
        assert [fields["type"] for _, fields in events] == expected, user
        assert [(entry_id, fields["type"]) for entry_id, fields in events] == events_of(redis_client, user)
        ids = [id_key(entry_id) for entry_id, _ in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for entry_id, fields in events:
            assert set(fields) == {"user", "type", "ts"}
            ts = int(fields["ts"])
            # The event's timestamp is the cluster's clock at the operation, in milliseconds.
            assert start_ms - 5000 <= ts <= end_ms + 5000
            assert abs(ts - id_key(entry_id)[0]) <= 1000
    assert full_events(redis_client, bystander) == []
    for partition in range(PARTITIONS):
        for _, fields in redis_client.xrange(keys.events_key(partition)):
            assert fields["user"] not in ("", " x", ".x", "x" * 129)

    # Statistics: the delete removed the earlier reads, so each user counts the one read since re-creating.
    with grpc.insecure_channel(f"127.0.0.1:{system.reporting_port}") as channel:
        reporting = reporting_pb2_grpc.ReportingServiceStub(channel)

        def reads() -> list[int]:
            return [
                reporting.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=user), timeout=TIMEOUT_S).reads
                for user in users
            ]

        wait_until(lambda: reads() == [1] * len(users), what="one read per user since re-creating")
        assert reporting.GetProfileStats(reporting_pb2.GetProfileStatsRequest(user=bystander), timeout=10).reads == 0


def test_racing_operations_on_one_user_are_serialised(
    system: System, redis_client: RedisCluster, audit: str, unique: str
) -> None:
    """Creates, reads, updates and deletes of one user, all at once: the stream is a valid history.

    Each operation checks and writes in one script, so its event is appended exactly when it
    succeeded and in the order the cluster ran it: replaying the events as a state machine
    (create only when absent; read, update, delete only when present) must never fail.
    """
    user = f"{unique}-race"
    ops = ["create"] * 40 + ["delete"] * 40 + ["get"] * 40 + ["update"] * 40
    random.Random(7).shuffle(ops)

    async def run() -> list[tuple[str, grpc.StatusCode]]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            outcomes = await asyncio.gather(*(call(stub, op, user, {"n": str(i)}) for i, op in enumerate(ops)))
        return [(op, status) for op, (status, _) in zip(ops, outcomes, strict=True)]

    results = asyncio.run(run())
    for op, status in results:
        assert status in (OK, NOT_FOUND if op != "create" else ALREADY_EXISTS), (op, status)
    successes = {kind: sum(1 for op, status in results if op == kind and status == OK) for kind in EVENT_TYPE}
    assert successes["create"] >= 1

    types = [kind for _, kind in events_of(redis_client, user)]
    assert {EVENT_TYPE[op]: successes[op] for op in successes} == {
        kind: types.count(kind) for kind in EVENT_TYPE.values()
    }
    present = False
    for position, kind in enumerate(types):
        if kind == "create":
            assert not present, f"create of an existing profile at event {position}: {types}"
            present = True
        else:
            assert present, f"{kind} of a missing profile at event {position}: {types}"
            present = kind != "delete"
    assert bool(redis_client.exists(keys.profile_key(user, PARTITIONS))) == present
