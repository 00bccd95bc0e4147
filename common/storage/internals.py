"""Where profilemesh reaches into redis-py's undocumented internals, and why: nowhere else does.

Checked against redis-py 8.1.0 (requirements.txt pins it); tests/test_redis_internals.py fails
loudly if an upgrade changes what is relied on here.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot as _key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.storage.replies import text


def keep_command_table(client: RedisCluster) -> None:
    """Learn the server's command table once, and find movable keys of stream reads locally.

    redis-py re-reads the command table (COMMAND) from the client's "default node" at every
    topology refresh, and a refresh follows every connection error. The default node is the
    first primary CLUSTER SLOTS lists; while that primary's whole shard is down, every refresh
    fails, and with it every command of the client on every shard, not just the dead one's.
    The table doesn't change while a process runs, so it is learnt once.

    XREADGROUP and XREAD have "movable keys", which redis-py resolves by sending COMMAND GETKEYS
    to that same default node before each call: a round trip per read, and a failure while that
    node is down. Their keys are the first half of what follows STREAMS, so they are found here.
    """
    parser: AsyncCommandsParser = client.commands_parser
    learn = parser.initialize
    movable_keys = parser._get_moveable_keys

    async def initialize(node: ClusterNode | None = None) -> None:
        if node is not None:
            parser.node = node
        if not parser.commands:
            await learn(node)

    async def get_movable_keys(*args: Any) -> tuple[str, ...] | None:
        keys = stream_keys(args)
        return tuple(keys) if keys is not None else await movable_keys(*args)

    parser.initialize = initialize  # type: ignore[method-assign]  # the patch this module exists for
    parser._get_moveable_keys = get_movable_keys  # type: ignore[method-assign]  # likewise


def startup_nodes(client: RedisCluster) -> dict[str, ClusterNode]:
    """The nodes the client was configured with, to give to `keeping_startup_nodes`."""
    return dict(client.nodes_manager.startup_nodes)


@contextlib.asynccontextmanager
async def keeping_startup_nodes(client: RedisCluster, configured: dict[str, ClusterNode]) -> AsyncIterator[None]:
    """Around a (re)initialisation: the client never forgets where its cluster is, so a process started before its
    cluster was created connects once it is.

    redis-py replaces its startup nodes with the nodes it finds at each initialisation. Nodes that answer but
    serve no slot yet (a cluster not created yet, as when every container of compose.yaml starts at once) give
    it none: its startup nodes become empty, the initialisation fails with IndexError (no primary to pick as
    its default node), and no later attempt can reach anything. So the configured nodes are put back after
    every initialisation, and that IndexError is raised as the RedisClusterException it means.
    """
    manager = client.nodes_manager
    try:
        yield
    except IndexError as error:
        if manager.nodes_cache:
            raise
        raise RedisClusterException("no node serves any slot yet: is the cluster created?") from error
    finally:
        for name, node in configured.items():
            manager.startup_nodes.setdefault(name, node)


async def relearn_topology(client: RedisCluster, configured: dict[str, ClusterNode]) -> None:
    """Learn the slots' nodes again, without the command table (see keep_command_table) or a new client.

    redis-py re-learns only on its own retries; the script runner follows redirects itself, so it asks for
    the layout through the nodes manager directly. redis-py 8.1 marks every connection for reconnect at each
    re-learning: refresh_topology keeps re-learnings few (common/storage/connection.py).
    """
    async with keeping_startup_nodes(client, configured):
        await client.nodes_manager.initialize()


def covered_slots(client: RedisCluster) -> int:
    """How many of the 16384 slots the client knows a node for.

    A client that learnt the layout halfway through the cluster's creation knows only some; a command on any
    other slot then fails with KeyError inside redis-py (not SlotNotCoveredError), and nothing makes it learn
    the layout again, since no node ever answers MOVED for a slot it was never asked about.
    """
    return len(client.nodes_manager.slots_cache)


def stream_keys(args: Sequence[Any]) -> list[Any] | None:
    """The stream keys of an XREADGROUP or XREAD command (None for any other command)."""
    words = [text(value) for value in args]
    command = words[0].upper() if words else ""
    if command not in ("XREADGROUP", "XREAD"):
        return None
    # XREADGROUP GROUP <group> <consumer> [options] STREAMS <keys> <ids>: the group's and the
    # consumer's names may be any word, STREAMS included.
    first_option = 4 if command == "XREADGROUP" else 1
    upper = [word.upper() for word in words]
    if "STREAMS" not in upper[first_option:]:
        return None
    streams_and_ids = list(args[upper.index("STREAMS", first_option) + 1 :])
    return streams_and_ids[: len(streams_and_ids) // 2]


@contextlib.contextmanager
def closed_under_command() -> Iterator[None]:
    """Report a connection closed under a running command as the ConnectionError it is.

    redis-py 8.1 raises AttributeError or TypeError instead when a connection is closed under a command
    (its writer or reader is already None: `'NoneType' object has no attribute 'writelines'`), as happens
    to concurrent commands when the cluster comes back; under uvloop, a write to a transport the peer
    closed raises RuntimeError ("the handler is closed"). Only errors raised inside redis-py itself (or
    the asyncio streams it calls) are converted: the same errors from our own code are bugs, and surface
    as such.
    """
    try:
        yield
    except (AttributeError, TypeError, RuntimeError) as error:
        if not _raised_in_redis(error):
            raise
        raise RedisConnectionError(f"connection closed under a running command: {error!r}") from error


def _raised_in_redis(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is redis-py's code, or the event loop's called
    by it (over TLS a closed transport fails inside asyncio.sslproto: `'NoneType' object has no attribute
    '_write_appdata'`; uvloop's transports are Cython, whose frames name their module too)."""
    modules = []
    trace = error.__traceback__
    while trace is not None:
        modules.append(str(trace.tb_frame.f_globals.get("__name__", "")))
        trace = trace.tb_next
    while modules and modules[-1].startswith(("asyncio.", "uvloop.")):
        modules.pop()
    return bool(modules) and modules[-1].startswith("redis.")


_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)


class NothingSent(Exception):
    """No connection to the node could be made: none of the commands reached it."""


async def send_on_one_connection(node: ClusterNode, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send every command on one connection of `node` and read every reply; error replies are returned.

    redis-py has no public way to pipeline on one chosen connection (its cluster pipeline picks its own,
    and WAIT speaks only for the writes of its connection), so this takes one from the node's pool.
    A connection error after sending propagates: the commands may or may not have run.
    """
    connection = node.acquire_connection()
    try:
        try:
            # A connection whose peer went away (a killed primary) is replaced before
            # anything is sent, so its failure still proves nothing ran.
            if connection.is_connected and await connection.can_read():
                await connection.disconnect()
        except _BROKEN:
            await connection.disconnect()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
        except _BROKEN as error:
            raise NothingSent(f"cannot connect to {node.name}: {error}") from error
        try:
            with closed_under_command():
                await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response())
                    except ResponseError as error:
                        replies.append(error)
                return replies
        except (RedisError, OSError):
            await connection.disconnect()
            raise
    finally:
        node.release(connection)


async def shard_messages(node: ClusterNode, channels: Sequence[str], idle_s: float) -> AsyncIterator[str | None]:
    """Subscribe to the sharded `channels` (all in slots `node` serves) on a connection of our own: yield None once
    every subscription is confirmed, then the channel of each message.

    redis-py's cluster pub/sub reads one node at a time; this holds one connection per node, as a blocking
    read does. It ends with a connection error when the node stops serving a channel (its slot moved: the
    server unsubscribes it), when the connection fails, or when a ping sent after `idle_s` of silence goes
    unanswered for as long again (a peer gone without a word).
    """
    connection = node.acquire_connection()
    try:
        await connection.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
        # One channel per command: the channels of one SSUBSCRIBE must share a slot.
        commands = [("SSUBSCRIBE", channel) for channel in channels]
        await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        unconfirmed, pinged = len(channels), False
        while True:
            # RESP3 (our connections' protocol) sends the messages as pushes, which redis-py hands to a push
            # handler unless asked for; a read that times out returns None.
            reply = await connection.read_response(timeout=idle_s, disconnect_on_error=False, push_request=True)
            if reply is None:  # silence: ask whether the node is still there
                if pinged:
                    raise RedisConnectionError(f"{node.name} answered no ping for {idle_s:g} s")
                await connection.send_packed_command(connection.pack_command("PING"), check_health=False)
                pinged = True
                continue
            pinged = False
            if not isinstance(reply, list):  # the ping's PONG
                continue
            kind = text(reply[0])
            if kind == "smessage":
                yield text(reply[1])
            elif kind == "ssubscribe":
                unconfirmed -= 1
                if not unconfirmed:
                    yield None
            elif kind == "sunsubscribe":
                raise RedisConnectionError(f"{node.name} no longer serves {text(reply[1])}")
    finally:
        await connection.disconnect()
        node.release(connection)


@functools.lru_cache(maxsize=1 << 16)
def slot_of(name: str) -> int:
    """The hash slot (0-16383) of a key or sharded channel, hash tags included; a name's never changes, so it is
    computed once (a top list at 4,096 partitions routes 4,096 names a call)."""
    return int(_key_slot(name.encode()))


def primary_of_slot(client: RedisCluster, slot: int) -> ClusterNode | None:
    """The primary serving `slot` as the client knows the slot map; None when no node does."""
    nodes = client.nodes_manager.slots_cache.get(slot)
    return nodes[0] if nodes else None
