"""What common/redis_internals.py relies on in redis-py, checked against the real cluster, so that an
upgrade that changes those internals fails here, by name, rather than in a shard outage."""

from __future__ import annotations

import asyncio
import inspect

import redis
from redis._parsers.commands import AsyncCommandsParser

from common import keys
from common.cluster import Cluster
from common.redis_internals import stream_keys
from localdev.system import System


def test_the_parser_internals_it_patches_are_there() -> None:
    assert redis.__version__ == "8.1.0", "re-check common/redis_internals.py against this redis-py, then update this"
    parser = AsyncCommandsParser()
    assert inspect.iscoroutinefunction(parser.initialize)
    assert inspect.iscoroutinefunction(parser._get_moveable_keys)
    assert parser.commands == {}


def test_stream_keys_are_the_first_half_after_streams() -> None:
    assert stream_keys(["XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "a", "b", ">", ">"]) == ["a", "b"]
    assert stream_keys([b"XREAD", b"BLOCK", 10, b"STREAMS", b"s", b"0"]) == [b"s"]
    # A group or consumer named "streams" is not the keyword.
    assert stream_keys(["xreadgroup", "GROUP", "streams", "STREAMS", "STREAMS", "k", "0"]) == ["k"]
    assert stream_keys(["GET", "k"]) is None
    assert stream_keys(["XADD", "k", "*", "f", "v"]) is None


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
            client = await cluster.connected()
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
