"""What common/storage/internals.py relies on in redis-py, checked against the real cluster, so that an
upgrade that changes those internals fails here, by name, rather than in a shard outage."""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path

import pytest
import redis
import uvloop
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from common.runtime.config import Settings
from common.storage import keys
from common.storage.cluster import Cluster
from common.storage.connection import REFRESH_FLOOR_S
from common.storage.internals import closed_under_command, send_on_one_connection
from localdev.cluster import LocalCluster
from localdev.ports import free_ports
from localdev.system import System
from localdev.waiting import poll_until
from tests.conftest import PARTITIONS


def test_the_parser_internals_it_patches_are_there() -> None:
    assert redis.__version__ == "8.1.0", "re-check common/storage/internals.py against this redis-py, then update this"
    parser = AsyncCommandsParser()
    assert inspect.iscoroutinefunction(parser.initialize)
    assert inspect.iscoroutinefunction(parser._get_moveable_keys)
    assert parser.commands == {}


def test_the_connection_internals_it_pipelines_on_are_there() -> None:
    """send_on_one_connection takes a connection from a node's pool and drives it by hand."""
    assert callable(ClusterNode.acquire_connection) and callable(ClusterNode.release)
    for name in ("connect", "disconnect", "can_read", "send_packed_command", "read_response"):
        assert inspect.iscoroutinefunction(getattr(AbstractConnection, name)), name
    assert "check_health" in inspect.signature(AbstractConnection.send_packed_command).parameters
    assert callable(AbstractConnection.pack_commands)
    assert isinstance(AbstractConnection.is_connected, property)


def test_one_connection_carries_a_script_and_its_wait(system: System) -> None:
    """The durable path's shape: commands and WAIT on one connection, replies (errors too) in order."""
    key = keys.profile_key("internals-pipeline", PARTITIONS)

    async def pipeline() -> list[object]:
        cluster = Cluster(system.client_settings())
        try:
            client = await cluster.connection.connected()
            node = client.get_node_from_key(key)
            return await send_on_one_connection(
                node, [("SET", key, "v"), ("GET", key), ("HGET", key, "f"), ("WAIT", 1, 1000), ("UNLINK", key)]
            )
        finally:
            await cluster.close()

    replies = asyncio.run(pipeline())
    assert replies[:2] == [b"OK", b"v"]  # raw replies: no response callbacks on this path
    assert isinstance(replies[2], redis.exceptions.ResponseError) and "WRONGTYPE" in str(replies[2])
    # WAIT answers how many replicas have the SET (0 if a replica link is still syncing); then the key is gone.
    assert isinstance(replies[3], int) and replies[4] == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_write_to_a_connection_closed_under_it_is_a_connection_error(system: System, loop: str) -> None:
    """What a command meets when a concurrent one tore its connection down: asyncio reports a reset,
    uvloop a RuntimeError from its transport; callers must see the ConnectionError either way."""

    async def write_after_close() -> BaseException:
        client = system.cluster.async_client()
        try:
            await client.initialize()
            node = client.get_default_node()
            connection = node.acquire_connection()
            try:
                await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
                connection._writer.transport.close()  # type: ignore[union-attr]  # as a concurrent disconnect does
                # Until the loop has closed it (uvloop may close later, when its write buffer is flushed): then
                # each loop's own error comes, not a reset read from a transport still closing.
                async with asyncio.timeout(10):
                    while not connection._reader.at_eof():  # type: ignore[union-attr]  # connected above
                        await asyncio.sleep(0.01)
                with pytest.raises(RedisConnectionError) as caught, closed_under_command():
                    await connection.send_packed_command(connection.pack_command("PING"), check_health=False)
                    await connection.read_response()
                return caught.value
            finally:
                node.release(connection)
        finally:
            await client.aclose()

    error = uvloop.run(write_after_close()) if loop == "uvloop" else asyncio.run(write_after_close())
    if loop == "uvloop":
        assert isinstance(error.__cause__, RuntimeError), "uvloop's own error, converted"


def test_refreshes_due_together_relearn_the_layout_once(system: System) -> None:
    """Tasks that find the lock free while it is handed on to a waiter queue behind the waiters, yet may re-learn
    only if no refresh came in between (common/storage/connection.py refresh_topology): one CLUSTER SLOTS."""

    async def relearnt() -> int:
        cluster = Cluster(system.client_settings())
        connection = cluster.connection
        try:
            await connection.connected()
            connection._refreshed_at = time.monotonic() - REFRESH_FLOOR_S  # due, as after a failure
            before = _calls(system, "cluster|slots")
            async with connection._initializing:  # a refresh under way: these wait for its result
                waiting = [asyncio.create_task(connection.refresh_topology()) for _ in range(5)]
                await asyncio.sleep(0)
            # Started as the lock is handed on to the first of them: they find it free, and queue for it.
            late = [asyncio.create_task(connection.refresh_topology()) for _ in range(20)]
            await asyncio.gather(*waiting, *late)
            return _calls(system, "cluster|slots") - before
        finally:
            await cluster.close()

    assert asyncio.run(relearnt()) == 1


def _calls(system: System, command: str) -> int:
    """How often the cluster's nodes ran `command` (as INFO commandstats names it)."""
    total = 0
    for index in range(len(system.cluster.ports)):
        stats = system.cluster.node(index).info("commandstats")
        total += int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return total


def test_stream_reads_neither_ask_the_default_node_nor_relearn_the_command_table(system: System) -> None:
    """An XREADGROUP goes straight to its stream's node; a topology refresh reads no command table."""
    stream = keys.events_key(3)

    async def read_refresh_read() -> None:
        cluster = Cluster(system.client_settings("aggregator_svc"))
        try:
            client = await cluster.connection.connected()
            for _ in range(2):
                reply = await client.xreadgroup("aggregator", "internals-test", {stream: "0"}, count=1)
                assert reply is not None
                client._initialize = True  # what any connection error leaves behind: a refresh next
        finally:
            await cluster.close()

    getkeys, tables = _calls(system, "command|getkeys"), _calls(system, "command")
    asyncio.run(read_refresh_read())
    assert _calls(system, "command|getkeys") == getkeys
    assert _calls(system, "command") == tables + 1  # learnt once, at the start


def test_a_client_started_before_its_cluster_exists_connects_once_it_does(tmp_path: Path) -> None:
    """Nodes that answer but serve no slot yet (compose starts everything at once) must not make the client forget
    its startup nodes (keeping_startup_nodes; before, it never connected and the service never served), nor may
    it keep a layout learnt halfway through the creation (a command on a slot it lacks failed with KeyError)."""
    ports = free_ports(12)
    cluster = LocalCluster(data_dir=tmp_path / "cluster", ports=ports[:6], bus_ports=ports[6:])
    settings = Settings.from_env(cluster.user_env(None))

    async def scenario() -> tuple[bool, bool, bool, bool]:
        client = Cluster(settings)
        try:
            await client.check_credentials()  # nothing answers yet: a warning, no failure
            before_nodes = await client.ping()
            for index in range(6):
                cluster.start_node(index)
            await asyncio.to_thread(
                poll_until, lambda: all(cluster._answers(i) for i in range(6)), 30, "the nodes to answer"
            )
            before_creation = await client.ping()  # every node answers, none serves a slot
            first = cluster.node(0)
            first.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 5460)  # as the creation does, one node at a time
            halfway = await client.ping()
            first.execute_command("CLUSTER", "FLUSHSLOTS")
            first.close()
            await asyncio.to_thread(cluster._create, 30)
            await asyncio.to_thread(cluster.wait_ready, 30)
            deadline = time.monotonic() + 10
            while not await client.ping() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return before_nodes, before_creation, halfway, await client.ping()
        finally:
            await client.close()

    try:
        assert asyncio.run(scenario()) == (False, False, False, True)
    finally:
        cluster.stop()
