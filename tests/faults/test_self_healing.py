"""A supervised cluster heals itself, and two replicas of each service keep REST callers served.

The system here runs like `make run` with PROFILEMESH_REPLICAS=2: cluster nodes under the
supervisor, two replicas each of profile_svc and reporting_svc behind the gateway's one target.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import psutil
import pytest

from common.storage import keys
from localdev.faults import primary_of, shard_of
from localdev.ports import free_ports
from localdev.prometheus import Prometheus
from localdev.system import System
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.conftest import PARTITIONS, running_system
from tests.helpers import http_call, wait_until

WRITES_BACK_WITHIN_S = 15
RATE_PER_S = 200
# Requests in the 4 s of a scenario that make it a test under load: half the schedule, which a busy machine keeps.
MEANINGFUL_LOAD = 2 * RATE_PER_S


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("replicated"), replicas=2, supervised=True) as system:
        yield system


def _user_on(partition: int) -> str:
    return next(
        u for i in itertools.count() if keys.partition_of(u := f"h{uuid.uuid4().hex[:6]}-{i}", PARTITIONS) == partition
    )


def _create(stub: profile_pb2_grpc.ProfileServiceStub, partition: int) -> bool:
    """A create of a new user on `partition`; whether it was acknowledged."""
    try:
        stub.CreateProfile(profile_pb2.CreateProfileRequest(user=_user_on(partition), fields={"k": "v"}), timeout=1)
        return True
    except grpc.RpcError:
        return False


def _watch_promotion(system: System, victim: int, killed_at: float) -> list[float]:
    """Seconds from the kill until another node serves partition 0, filled in by a thread when it happens."""
    promoted_after = [float("nan")]

    def watch() -> None:
        while time.monotonic() - killed_at < WRITES_BACK_WITHIN_S:
            try:
                if primary_of(system.cluster, keys.events_key(0)) != victim:
                    promoted_after[0] = time.monotonic() - killed_at
                    return
            except (LookupError, RuntimeError):
                pass
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return promoted_after


def _is_replica_in_sync(system: System, index: int) -> bool:
    try:
        info = system.cluster.node(index).info("replication")
    except Exception:  # not up yet
        return False
    return info["role"] == "slave" and info.get("master_link_status") == "up"


@dataclass
class Request:
    path: str
    status: int  # 0 when the request itself failed
    started: float
    ended: float
    message: str = ""


async def _steady_load(
    gateway: str, users: list[str], stop: asyncio.Event, done: list[Request], in_flight: list[int]
) -> None:
    """RATE_PER_S REST requests a second, sent on schedule whatever the answers (an open loop)."""
    paths = itertools.cycle(
        [f"/profile/{users[i % len(users)]}" for i in range(5)]
        + [f"/reporting/users/{users[0]}/stats", "/reporting/operationTotals", "/reporting/profileStats/3"]
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(path: str) -> None:
            started = time.monotonic()
            in_flight[0] += 1
            try:
                async with session.get(gateway + path) as reply:
                    body = await reply.read()
                    status = reply.status
            except aiohttp.ClientError as error:
                status, body = 0, repr(error).encode()
            finally:
                in_flight[0] -= 1
            done.append(Request(path, status, started, time.monotonic(), "" if status == 200 else body.decode()[:200]))

        tasks = []
        next_at = time.monotonic()
        while not stop.is_set():
            tasks.append(asyncio.create_task(one(next(paths))))
            next_at += 1 / RATE_PER_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)


def _gateway_connected_to(system: System, port: int) -> bool:
    gateway = psutil.Process(system.processes["gateway"].pid)
    return any(
        c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in gateway.net_connections()
    )


def test_prometheus_scrapes_every_replica(replicated: System, tmp_path: Path) -> None:
    """Each replica serves metrics on a port of its own, and the scrape configuration names them all."""
    prometheus = Prometheus(tmp_path / "prometheus", free_ports(1)[0], replicated.metrics_ports, scrape_interval_s=1)
    try:
        prometheus.start()

        def up_by_job() -> dict[str, int]:
            return {r["metric"]["job"]: int(r["value"][1]) for r in prometheus.query("count by (job) (up == 1)")}

        expected = {"profile_svc": 2, "reporting_svc": 2, "aggregator_svc": 1, "gateway": 1}
        wait_until(lambda: up_by_job() == expected, 30, what=f"Prometheus to see {expected} targets up")
    finally:
        prometheus.stop()


def test_replicas_stopped_or_killed_under_steady_rest_load(replicated: System) -> None:
    system = replicated
    users = [f"l{uuid.uuid4().hex[:6]}-{i}" for i in range(5)]
    for user in users:
        assert http_call(system.gateway_port, "POST", f"/profile/{user}", {"email": "e@example.com"})[0] == 201
    second = {"profile_svc": "profile_svc-2", "reporting_svc": "reporting_svc-2"}

    async def scenario(action: Callable[[], object]) -> tuple[list[Request], float, int]:
        stop, done, in_flight = asyncio.Event(), [], [0]
        load = asyncio.create_task(_steady_load(system.gateway_url, users, stop, done, in_flight))
        await asyncio.sleep(1.0)
        acted_at, in_flight_then = time.monotonic(), in_flight[0]
        action()
        await asyncio.sleep(3.0)
        stop.set()
        await load
        return done, acted_at, in_flight_then

    def both_connected() -> bool:
        return all(_gateway_connected_to(system, port) for port in (*system.profile_ports, *system.reporting_ports))

    wait_until(both_connected, timeout_s=10, what="the gateway to reach every replica")

    # SIGTERM: the replica turns NOT_SERVING, the gateway stops sending it calls, it drains and exits.
    terminated = [system.processes[name] for name in second.values()]
    done, terminated_at, _ = asyncio.run(
        scenario(lambda: [process.send_signal(signal.SIGTERM) for process in terminated])
    )
    assert all(process.wait(10) == 0 for process in terminated)
    failed = [r for r in done if r.status != 200]
    print(
        f"\nSIGTERM of one replica of each: {len(done)} requests, {len(failed)} failed "
        f"{[(r.path, r.status, r.message, round(r.started - terminated_at, 3), round(r.ended - terminated_at, 3)) for r in failed]}"
    )
    assert len(done) >= MEANINGFUL_LOAD  # the load ran throughout (a loaded machine sends fewer on schedule)
    assert failed == []

    for name in second:
        system.processes.pop(second[name])
        system.start_replica(name, 1)
    system.wait_healthy()
    wait_until(both_connected, timeout_s=15, what="the gateway to reach the restarted replicas")

    # SIGKILL: only calls already on the wire to the killed replicas may fail. The gateway notices the
    # broken connections a few milliseconds after the kill (the first failure is that moment); calls
    # it sent in between were on the wire too. Every call started after that succeeds.
    killed = [system.processes[name] for name in ("profile_svc", "reporting_svc")]
    done, killed_at, in_flight_then = asyncio.run(scenario(lambda: [process.kill() for process in killed]))
    failed = [r for r in done if r.status != 200]
    noticed_at = min((r.ended for r in failed), default=killed_at)
    on_the_wire = [r for r in done if r.started < noticed_at and r.ended >= killed_at]
    print(
        f"SIGKILL of one replica of each: {len(done)} requests, {len(failed)} failed, {in_flight_then} in flight at "
        f"the kill, {len(on_the_wire)} between the kill and the gateway noticing it {(noticed_at - killed_at) * 1000:.0f} ms "
        f"later: {[(r.path, r.status, r.message) for r in failed]}"
    )
    assert len(done) >= MEANINGFUL_LOAD  # the load ran throughout (a loaded machine sends fewer on schedule)
    assert noticed_at - killed_at < 1.0
    assert len(failed) <= len(on_the_wire)
    assert all(killed_at <= r.ended and r.started < noticed_at for r in failed)
    assert all(r.status == 200 for r in done if r.started >= noticed_at)
    for process in killed:
        process.wait(10)
    for name in ("profile_svc", "reporting_svc"):
        system.processes.pop(name)
        system.start_replica(name, 0)
    system.wait_healthy()


def test_a_killed_primary_is_replaced_and_writes_come_back(replicated: System, capsys: pytest.CaptureFixture) -> None:
    system = replicated
    cluster = system.cluster
    with grpc.insecure_channel(f"127.0.0.1:{system.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        reader = _user_on(0)
        stub.CreateProfile(profile_pb2.CreateProfileRequest(user=reader, fields={"k": "v"}), timeout=5)
        victim = primary_of(cluster, keys.events_key(0))
        old_pid = cluster.processes[victim].pid

        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)  # a crash: the supervisor, not the test, brings it back
        promoted_after = _watch_promotion(system, victim, killed_at)
        first_read_after = first_write_after = None
        while first_write_after is None or first_read_after is None:
            assert time.monotonic() - killed_at < WRITES_BACK_WITHIN_S, (
                "reads and creates on the shard did not succeed again in time"
            )
            if first_read_after is None:
                try:
                    stub.GetProfile(profile_pb2.GetProfileRequest(user=reader), timeout=1)
                    first_read_after = time.monotonic() - killed_at
                except grpc.RpcError:
                    pass
            if first_write_after is None and _create(stub, 0):
                first_write_after = time.monotonic() - killed_at
            else:
                time.sleep(0.05)

    # The old primary runs again, as a new process on its own port, and is a replica in sync.
    assert cluster.processes[victim].pid != old_pid
    wait_until(lambda: _is_replica_in_sync(system, victim), timeout_s=10, what="the old primary to be a replica")
    log = capsys.readouterr().err
    assert f"node 127.0.0.1:{cluster.ports[victim]} exited (code -9)" in log
    with capsys.disabled():
        print(
            f"\nsupervised: kill -> promotion {promoted_after[0]:.2f} s -> first read {first_read_after:.2f} s "
            f"-> first acknowledged create {first_write_after:.2f} s; {log.strip()}"
        )


def test_a_killed_replica_is_replaced(replicated: System, capsys: pytest.CaptureFixture) -> None:
    cluster = replicated.cluster
    cluster.wait_ready()
    shard = shard_of(cluster, keys.events_key(5))
    replica = shard[1]
    old_pid = cluster.processes[replica].pid
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: cluster.processes[replica].pid != old_pid, timeout_s=5, what="the replica to be started again")
    wait_until(lambda: _is_replica_in_sync(replicated, replica), timeout_s=10, what="the replica to be in sync")
    assert primary_of(cluster, keys.events_key(5)) == shard[0]  # the primary stayed primary
    assert f"node 127.0.0.1:{cluster.ports[replica]} exited (code -9)" in capsys.readouterr().err
    with grpc.insecure_channel(f"127.0.0.1:{replicated.profile_port}") as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        wait_until(lambda: _create(stub, 5), timeout_s=5, what="replica-durable creates on the shard")
