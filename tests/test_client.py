"""profilemesh.client against the real mesh: two replicas of each service, a real cluster.

Every method, typed errors with their reasons, ensure_created across a replica killed mid-call, get_many of
2,500 users, and a watch that survives a SIGTERM of the replica serving it and a kill -9 of the other with no
resuming code in the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from common.storage import keys
from localdev.system import System
from profilemesh.client import (
    AsyncProfileClient,
    EventsHistoryChanged,
    EventsTrimmed,
    FeedRestartRequired,
    InvalidArgument,
    InvalidResumeToken,
    OutcomeUnknown,
    Profile,
    ProfileClient,
    ProfileExists,
    ProfileNotFound,
    ReportingClient,
    Unavailable,
)
from tests.conftest import PARTITIONS, TEST_SETTINGS, running_system
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)

CREATE = "/profilemesh.profile.v1.ProfileService/CreateProfile"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Two replicas of profile_svc and reporting_svc; events kept 10 minutes, so tokens resume."""
    settings = {**TEST_SETTINGS, "PROFILEMESH_EVENTS_RETENTION_S": "600", "PROFILEMESH_STREAM_HEARTBEAT_S": "1"}
    with running_system(tmp_path_factory.mktemp("clients"), settings, replicas=2) as system:
        yield system


def _target(ports: list[int]) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)


def _in_flight(system: System, name: str, method: str) -> float:
    """A replica's profilemesh_grpc_server_in_flight for one method, from its /metrics."""
    with urllib.request.urlopen(system.metrics_url(name), timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("profilemesh_grpc_server_in_flight{") and f'method="{method}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _restore(system: System, name: str, index: int) -> None:
    system.start_replica("profile_svc", index)
    wait_until(lambda: system.grpc_status(system.profile_ports[index]) == "SERVING", 30, what=f"{name} serving")


def test_every_method_with_typed_results_and_errors(mesh: System, unique: str) -> None:
    ana, bob = f"{unique}-ana", f"{unique}-bob"
    with ProfileClient(_target(mesh.profile_ports)) as profiles, ReportingClient(_target(mesh.reporting_ports)) as r:
        profiles.create(ana, {"email": "ana@example.com", "username": "Ana"})
        assert profiles.get(ana) == Profile(ana, {"email": "ana@example.com", "username": "Ana"})
        profiles.update(ana, {"username": "Ana2"})
        assert profiles.get(ana).fields == {"email": "ana@example.com", "username": "Ana2"}
        assert profiles.ensure_created(bob, {"email": "bob@example.com"}) is True
        assert profiles.ensure_created(bob, {"email": "other@example.com"}) is False  # there already
        results = profiles.get_many([ana, f"{unique}-nobody", bob])
        assert [r.user for r in results] == [ana, f"{unique}-nobody", bob]
        assert results[0].profile == Profile(ana, {"email": "ana@example.com", "username": "Ana2"})
        assert isinstance(results[1].error, ProfileNotFound) and results[1].error.reason == "PROFILE_NOT_FOUND"

        with pytest.raises(ProfileExists) as exists:
            profiles.create(ana, {"email": "x"})
        assert (exists.value.reason, exists.value.message) == ("PROFILE_EXISTS", "Profile exists")
        with pytest.raises(InvalidArgument) as bad:
            profiles.update(ana, {"bad name!": "x"})
        assert bad.value.reason == "INVALID_ARGUMENT" and bad.value.field == "fields"
        with pytest.raises(InvalidArgument) as bad:
            r.top(0)
        assert bad.value.field == "limit"
        with pytest.raises(InvalidResumeToken) as refused:
            next(profiles.watch_events(resume_token="not-a-token"))
        assert refused.value.field == "resume_token"

        # Reads counted: ana read 3 times (get, get, get_many), bob once.
        wait_until(lambda: r.stats(ana) == 3 and r.stats(bob) == 1, 20, what="the reads to be counted")
        # The top list follows the counts by a copy into its index (docs/architecture.md, "The top list's index").
        wait_until(lambda: {(s.user, s.score) for s in r.top(1000)} >= {(ana, 3), (bob, 1)}, 10, what="the top list")
        totals = r.totals()
        assert totals.create >= 2 and totals.read >= 4 and totals.update >= 1
        board = next(iter(r.watch_top(1000)))
        assert (ana, 3) in {(s.user, s.score) for s in board.results} and board.totals.create >= 2

        profiles.delete(ana)
        assert profiles.ensure_deleted(ana) is False  # gone already
        assert profiles.ensure_deleted(bob) is True
        with pytest.raises(ProfileNotFound) as missing:
            profiles.get(ana)
        assert missing.value.reason == "PROFILE_NOT_FOUND" and str(missing.value).startswith("NOT_FOUND")


def test_get_many_of_2500_users_in_chunks(mesh: System, unique: str) -> None:
    users = [f"{unique}-m{i}" for i in range(2500)]

    async def scenario() -> list:
        async with AsyncProfileClient(_target(mesh.profile_ports)) as profiles:
            limit = asyncio.Semaphore(64)

            async def create(user: str) -> None:
                async with limit:
                    await profiles.create(user, {"n": user})

            await asyncio.gather(*(create(user) for user in users[::2]))  # every other one exists
            return await profiles.get_many(users)

    results = asyncio.run(scenario())
    assert [result.user for result in results] == users
    for index, result in enumerate(results):
        if index % 2 == 0:
            assert result.profile == Profile(users[index], {"n": users[index]}) and result.error is None
        else:
            assert isinstance(result.error, ProfileNotFound) and result.profile is None


def test_ensure_created_resolves_a_create_whose_replica_was_killed_mid_call(
    mesh: System, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The create reaches a replica, which sends it to a primary we hold stopped, and is killed -9 there:
    the client can't know whether it ran. ensure_created sends it again (to the other replica) and the
    mesh ends with exactly one profile and one create event, whichever way the first attempt went."""
    user = f"{unique}-once"
    admin = mesh.cluster.client(decode_responses=True)
    primary = admin.get_node_from_key(keys.profile_key(user, PARTITIONS))
    node = mesh.cluster.processes[mesh.cluster.ports.index(int(primary.port))]
    caplog.set_level(logging.INFO, logger="profilemesh.client")

    async def scenario() -> bool:
        async with AsyncProfileClient(_target(mesh.profile_ports)) as profiles:
            await profiles.get_many(["warm-up"])  # both replicas connected and health-checked
            os.kill(node.pid, signal.SIGSTOP)
            try:
                attempt = asyncio.create_task(profiles.ensure_created(user, {"email": "once@example.com"}))
                serving = None
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    serving = next((i for i in range(2) if _in_flight(mesh, _replica(i), CREATE) >= 1), None)
                    if serving is not None:
                        break
                assert serving is not None, "the create reached no replica"
                mesh.stop_process(_replica(serving), signal.SIGKILL)
                await asyncio.sleep(0.2)
            finally:
                os.kill(node.pid, signal.SIGCONT)
            created = await attempt
            _restore(mesh, _replica(serving), serving)
            return created

    created = asyncio.run(scenario())
    assert any("outcome unknown" in record.getMessage() for record in caplog.records), caplog.text
    with ProfileClient(_target(mesh.profile_ports)) as profiles:
        assert profiles.get(user).fields == {"email": "once@example.com"}
    creates = [f for _, f in admin.xrange(keys.events_key(keys.partition_of(user, PARTITIONS))) if f["user"] == user]
    assert [f["type"] for f in creates] == ["create", "read"]
    print(f"ensure_created: {'the retry created it' if created else 'the first attempt had created it'}")
    admin.close()


def _replica(index: int) -> str:
    return "profile_svc" if index == 0 else f"profile_svc-{index + 1}"


def test_watch_events_survives_sigterm_and_kill_of_the_replicas_with_no_resuming_code(
    mesh: System, unique: str
) -> None:
    users = [f"{unique}-w{i}" for i in range(20)]
    received: list = []
    written: list[str] = []

    async def scenario() -> int:
        async with (
            AsyncProfileClient(_target(mesh.profile_ports)) as watcher,
            AsyncProfileClient(_target(mesh.profile_ports)) as writer,
        ):
            watch = watcher.watch_events(users=users)
            first = asyncio.Event()

            async def consume() -> None:
                async for event in watch:
                    received.append(event)
                    first.set()

            consuming = asyncio.create_task(consume())
            stop_writing = asyncio.Event()

            async def write() -> None:
                n = 0
                while not stop_writing.is_set():
                    user = users[n % len(users)]
                    if await writer.ensure_created(user, {"n": str(n)}):
                        written.append(user)
                    await writer.ensure_deleted(user)
                    n += 1
                    await asyncio.sleep(0.01)

            while not watch.resume_token:  # the first heartbeat: the feed starts here
                await asyncio.sleep(0.05)
            writing = asyncio.create_task(write())
            await asyncio.wait_for(first.wait(), 20)
            # SIGTERM a replica: if the watch was on it, it reconnects (to the other, the only one serving).
            # Else it was on the other one: SIGTERM that one instead.
            serving = None
            for index in range(2):
                before = watch.reconnects
                mesh.stop_process(_replica(index), signal.SIGTERM)  # drains: the stream ends with STREAM_ENDED
                await asyncio.sleep(1.0)
                _restore(mesh, _replica(index), index)
                if watch.reconnects > before:
                    serving = index
                    break
            assert serving is not None, "neither replica's SIGTERM ended the stream"
            await asyncio.sleep(0.5)
            before = watch.reconnects
            other = 1 - serving  # where the watch went on: the connection is gone mid-stream
            mesh.stop_process(_replica(other), signal.SIGKILL)
            await asyncio.sleep(1.0)
            _restore(mesh, _replica(other), other)
            await asyncio.sleep(0.5)
            assert watch.reconnects > before, "the kill -9 did not end the stream"
            stop_writing.set()
            await writing
            await asyncio.sleep(2.0)  # the last events (and any duplicate) arrive by now
            consuming.cancel()
            return watch.reconnects

    reconnects = asyncio.run(scenario())
    admin = mesh.cluster.client(decode_responses=True)
    wanted = set(users)
    stored = [
        entry_id
        for partition in range(PARTITIONS)
        for entry_id, fields in admin.xrange(keys.events_key(partition))
        if fields["user"] in wanted and fields["type"] != "read"
    ]
    admin.close()
    ids = [event.id for event in received]
    assert reconnects >= 2
    assert len(ids) == len(set(ids)), "an event arrived twice"
    assert sorted(ids) == sorted(stored), f"missing {set(stored) - set(ids)}, extra {set(ids) - set(stored)}"
    print(f"watch: {len(ids)} events once each across {reconnects} reconnects")


def test_heartbeats_move_the_token_on_and_reach_the_persist_callback(mesh: System, unique: str) -> None:
    """A filter that matches nothing still keeps a fresh token (heartbeats every second here)."""
    persisted: list[str] = []

    async def save(token: str) -> None:
        persisted.append(token)

    async def scenario() -> str:
        async with AsyncProfileClient(_target(mesh.profile_ports)) as profiles:
            watch = profiles.watch_events(users=[f"{unique}-nobody"], on_token=save)
            waiting = asyncio.create_task(anext(watch))
            await asyncio.sleep(2.5)
            waiting.cancel()
            return watch.resume_token

    token = asyncio.run(scenario())
    assert len(persisted) >= 2 and token == persisted[-1] and token


def test_a_token_the_stream_no_longer_holds_raises_the_typed_error(mesh: System, unique: str) -> None:
    """A failover that lost the stream's tail, as XTRIM makes it: the next resume is OUT_OF_RANGE."""
    user = f"{unique}-gone"
    partition = keys.partition_of(user, PARTITIONS)

    async def scenario() -> FeedRestartRequired:
        async with AsyncProfileClient(_target(mesh.profile_ports)) as profiles:
            watch = profiles.watch_events(users=[user])
            task = asyncio.create_task(anext(watch))
            await profiles.create(user, {"a": "b"})
            # The client shows no heartbeat, so nothing says when the subscription has started (at 4,096
            # partitions a process's first one records every partition's position first): an event written
            # before then is not its to deliver. Write until one arrives.
            deadline = time.monotonic() + 10
            while not (await asyncio.wait({task}, timeout=0.5))[0]:
                assert time.monotonic() < deadline, "no event reached the subscriber in 10 s"
                await profiles.update(user, {"a": "b"})
            event = task.result()
            await watch.aclose()
            await profiles.update(user, {"a": "c"})  # an event after the token, which the trim below removes
            admin = mesh.cluster.client(decode_responses=True)
            admin.xtrim(keys.events_key(partition), minid=f"{int(time.time() * 1000) + 1000}-0")
            admin.close()
            await profiles.update(user, {"a": "d"})
            with pytest.raises(FeedRestartRequired) as ended:
                await asyncio.wait_for(anext(profiles.watch_events(users=[user], resume_token=event.resume_token)), 20)
            return ended.value

    error = asyncio.run(scenario())
    assert isinstance(error, EventsTrimmed | EventsHistoryChanged) and error.code.name == "OUT_OF_RANGE"
    assert error.reason in ("EVENTS_TRIMMED", "EVENTS_HISTORY_CHANGED")


def test_a_change_that_never_left_the_client_is_unavailable_not_outcome_unknown(unique: str) -> None:
    """Nothing listens: every attempt fails to connect, so the create surely did not run."""
    with ProfileClient("ipv4:127.0.0.1:1") as profiles, pytest.raises(Unavailable) as failed:
        profiles.create(f"{unique}-x", {"a": "b"}, timeout_s=1)
    assert not isinstance(failed.value, OutcomeUnknown), failed.value
