"""A whole shard down: its partitions answer UNAVAILABLE (or run out their deadline), the others keep working,
aggregation included."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import time

import grpc
from redis.cluster import RedisCluster

from common.errors import ServiceError, StorageError
from common.storage import keys
from common.storage.cluster import Cluster
from localdev.cluster import LocalCluster
from localdev.faults import primary_of, shard_of
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from reporting_svc.reports import SCRIPTS as REPORTING_SCRIPTS
from tests.conftest import PARTITIONS, TEST_SETTINGS
from tests.helpers import expected_statistics, http_call, scores_of, wait_until

USERS = [f"shard-user-{i}" for i in range(64)]


def _read_all(stub: profile_pb2_grpc.ProfileServiceStub) -> dict[str, grpc.StatusCode]:
    """Read every user at once (a call to a down partition may take its whole 2 s deadline)."""
    calls = {user: stub.GetProfile.future(profile_pb2.GetProfileRequest(user=user), timeout=2) for user in USERS}
    return {user: call.code() for user, call in calls.items()}


def test_a_stopped_shard_fails_only_its_partitions(fresh_system: System) -> None:
    system = fresh_system
    cluster = system.cluster
    pids = {name: process.pid for name, process in system.processes.items()}
    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for user in USERS:
            stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)

        shard = shard_of(cluster, keys.events_key(0))
        down = {
            user
            for user in USERS
            if primary_of(cluster, keys.events_key(keys.partition_of(user, PARTITIONS))) == shard[0]
        }
        assert 0 < len(down) < len(USERS)
        for index in shard:
            cluster.stop_node(index)

        # Once the cluster has noticed (node timeout 2 s), the other partitions answer again.
        wait_until(
            lambda: all(code == grpc.StatusCode.OK for user, code in _read_all(stub).items() if user not in down),
            timeout_s=30,
            what="the other partitions to serve",
        )
        codes = _read_all(stub)
        assert {codes[user] for user in down} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        assert all(codes[user] == grpc.StatusCode.OK for user in USERS if user not in down)
        # The service stays in its load balancer: most of its partitions work.
        assert system.grpc_status(system.profile_port) == "SERVING"
        status, body = http_call(system.gateway_port, "GET", f"/profile/{sorted(down)[0]}")
        assert status in (503, 504) and body["message"]

        _start_shard(cluster, shard)
        wait_until(
            lambda: set(_read_all(stub).values()) == {grpc.StatusCode.OK}, timeout_s=30, what="every partition back"
        )
    assert {name: process.pid for name, process in system.processes.items()} == pids


def test_aggregation_goes_on_for_the_other_partitions(fresh_system: System, fresh_client: RedisCluster) -> None:
    """While a shard is down, an entry a killed replica left pending on a healthy partition is reclaimed
    within a few claim intervals, a mix of changes there is counted exactly, and trimming goes on."""
    system = fresh_system
    cluster = system.cluster
    claim_idle_s = int(TEST_SETTINGS["PROFILEMESH_AGGREGATOR_CLAIM_IDLE_MS"]) / 1000
    shard = shard_of(cluster, keys.events_key(0))
    healthy = [p for p in range(PARTITIONS) if primary_of(cluster, keys.events_key(p)) != shard[0]]
    users = [user for user in (f"mix-{i}" for i in range(400)) if keys.partition_of(user, PARTITIONS) in healthy][:40]
    aggregator = system.processes["aggregator_svc"]
    rng = random.Random(7)
    history: list[tuple[str, str]] = []

    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel, contextlib.ExitStack() as restart:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        for index in shard:
            cluster.stop_node(index)
        restart.callback(_start_shard, cluster, shard)  # also when the test fails half-way
        wait_until(lambda: _serves(stub, users[0]), timeout_s=30, what="the other partitions to serve")
        try:
            aggregator.send_signal(signal.SIGSTOP)  # stalled: its blocking reads lapse on the server
            time.sleep(1)
            # Creates, reads, deletes and re-creates, one after another, so the history is known exactly.
            for user in users:
                for kind in [
                    "create",
                    *["read"] * rng.randint(0, 3),
                    "delete",
                    "create",
                    *["read"] * rng.randint(0, 3),
                ]:
                    _call(stub, user, kind)
                    history.append((user, kind))
            # A replica takes an entry and dies without applying it.
            ghost_stream = keys.events_key(keys.partition_of(users[0], PARTITIONS))
            # (on the stream's node: redis-py's cluster client would ask its default node, perhaps a dead one,
            # where XREADGROUP's key is; see common/storage/internals.py)
            ghost_node = cluster.node(primary_of(cluster, ghost_stream))
            assert ghost_node.xreadgroup("aggregator", "killed-replica", {ghost_stream: ">"}, count=1)
            taken_at = time.monotonic()
        finally:
            aggregator.send_signal(signal.SIGCONT)

        expected, _ = expected_statistics(history)

        seen: dict[str, object] = {}

        def counted() -> bool:
            seen["pending"] = fresh_client.xpending(ghost_stream, "aggregator")["pending"]
            scores = scores_of(fresh_client, PARTITIONS, users)
            seen["wrong"] = {
                user: (scores.get(user), count) for user, count in expected.items() if scores.get(user) != count
            }
            return seen["pending"] == 0 and not seen["wrong"]

        # Reclaimed once idle for one claim interval, by a round every quarter of it: about 2.5 s here,
        # which the test prints. It allows three intervals so that a loaded machine doesn't fail it.
        try:
            wait_until(
                counted,
                timeout_s=max(0.1, taken_at + 3 * claim_idle_s - time.monotonic()),
                what="the entry the dead replica held to be reclaimed and everything counted",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; last seen: {seen}") from None
        print(
            f"\nreclaimed and counted {time.monotonic() - taken_at:.2f} s after the replica took the entry "
            f"({(time.monotonic() - taken_at) / claim_idle_s:.2f} claim intervals)"
        )
        # Trimming goes on: each healthy partition keeps at most its last delivered entry.
        wait_until(
            lambda: all(fresh_client.xlen(keys.events_key(p)) <= 1 for p in healthy),
            timeout_s=10,
            what="the healthy partitions' streams to be trimmed",
        )

        restart.close()
        # Every partition answers again (NOT_FOUND for users this module's other test did not create).
        answered = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}
        wait_until(lambda: set(_read_all(stub).values()) <= answered, timeout_s=30, what="every partition back")


def test_retries_on_a_down_shard_leave_room_for_the_other_partitions(fresh_system: System) -> None:
    """The aggregator's loops retry a down shard's partitions without a deadline. Each attempt holds a place
    within the process's concurrency bound, the backoff between attempts none: a call to a healthy partition is
    served at once, even with four times the bound's worth of such retries going on (before, it waited behind
    them for as long as the shard was down; at 4,096 partitions a third of the maintenance is there)."""
    cluster = fresh_system.cluster
    shard = _healthy_shard_of(cluster, keys.events_key(0))
    down = [p for p in range(PARTITIONS) if primary_of(cluster, keys.events_key(p)) == shard[0]]
    healthy = [p for p in range(PARTITIONS) if p not in down]
    settings = dataclasses.replace(fresh_system.client_settings("reporting_svc"), redis_max_concurrency=4)

    async def scenario() -> tuple[float, int]:
        client = Cluster(settings)
        try:
            await client.verify_partitions()
            top_readers = client.script(REPORTING_SCRIPTS / "top_readers.lua", repeatable=True)

            async def read(partition: int) -> object:
                return await client.run(top_readers, [keys.reads_key(partition, client.generation)], [3])

            async def keep_reading(partition: int) -> None:
                while True:  # as a loop of the aggregator's does, whether the call is retried or fails at once
                    with contextlib.suppress(ServiceError, StorageError):
                        await read(partition)
                    await asyncio.sleep(0.05)

            await read(healthy[0])  # connected, the layout checked (its record may be on the shard)
            for index in shard:
                await asyncio.to_thread(cluster.stop_node, index)
            retrying = [asyncio.create_task(keep_reading(down[i % len(down)])) for i in range(16)]
            try:
                await asyncio.sleep(1)
                started = time.monotonic()
                async with asyncio.timeout(10):
                    for partition in healthy:
                        await read(partition)
                return time.monotonic() - started, sum(not task.done() for task in retrying)
            finally:
                for task in retrying:
                    task.cancel()
                await asyncio.gather(*retrying, return_exceptions=True)
        finally:
            await client.close()

    try:
        took_s, still_retrying = asyncio.run(scenario())
    finally:
        _start_shard(cluster, shard)
    assert still_retrying == 16  # they were still at it while the healthy partitions were read
    print(f"\n{len(healthy)} healthy partitions read in {took_s:.2f} s beside 16 retrying calls (bound 4)")


def _start_shard(cluster: LocalCluster, shard: list[int]) -> None:
    for index in shard:
        cluster.start_node(index)
    cluster.wait_ready()


def _healthy_shard_of(cluster: LocalCluster, key: str) -> list[int]:
    """shard_of, once every node sees the shard's primary healthy again (after another test restarted it)."""
    found: list[int] = []

    def healthy() -> bool:
        try:
            found[:] = shard_of(cluster, key)
        except LookupError:
            return False
        return True

    wait_until(healthy, timeout_s=30, what="the shard's primary to be seen healthy")
    return found


def _call(stub: profile_pb2_grpc.ProfileServiceStub, user: str, kind: str) -> None:
    if kind == "create":
        stub.CreateProfile(profile_pb2.CreateProfileRequest(user=user, fields={"k": "v"}), timeout=5)
    elif kind == "read":
        stub.GetProfile(profile_pb2.GetProfileRequest(user=user), timeout=5)
    else:
        stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=user), timeout=5)


def _serves(stub: profile_pb2_grpc.ProfileServiceStub, user: str) -> bool:
    try:
        stub.UpdateProfile(profile_pb2.UpdateProfileRequest(user=user, fields={"k": "v"}), timeout=2)
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.NOT_FOUND
    return True
