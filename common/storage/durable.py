"""Profile operations as one script plus its durability wait, on one connection to the slot's primary.

`WAIT` and `WAITAOF` speak only for the writes of their own connection, so the script and the
wait are pipelined on the same connection. The operation is retried only where the cluster
proves it did not run it (the connection could not be made, or a MOVED, TRYAGAIN or
CLUSTERDOWN reply); a failure after the script was sent is reported as an unknown outcome,
never retried behind the caller's back, because a create that ran and is retried would answer
ALREADY_EXISTS to a caller whose create succeeded.

Reads skip the durability wait (their only write is a statistics event). With
`PROFILEMESH_READ_CHECK=replica` a read is followed by WAIT 1 on its connection instead: answered only
once a replica acknowledged the primary's stream up to the read, so an old primary that was paused or
cut off (its replica promoted or out of reach) can't answer with data the shard no longer has, nor with
a write it never made durable. With `replica` durability a change
on a primary that has no replica in sync is refused before it runs: WAIT could only time out, and
the caller would learn after a second that the outcome is unknown instead of at once that nothing
happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import ServiceError, Unavailable
from common.runtime import metrics
from common.storage import keys as keys_module
from common.storage.cluster import Cluster
from common.storage.internals import NothingSent, send_on_one_connection

log = logging.getLogger(__name__)

# Replies that prove the command was not executed, so running it again is safe.
_NOT_EXECUTED = (MovedError, TryAgainError, ClusterDownError, BusyLoadingError, MasterDownError, ReadOnlyError)
_BROKEN = (RedisConnectionError, RedisTimeoutError, OSError)
MAX_BACKOFF_S = 0.2

NO_REPLICA = (
    "the shard holding this partition has no replica; replica durability can't be confirmed, "
    "so nothing was changed; retry once a replica has rejoined"
)
# How long a primary's replica count is trusted. A shard that lost its last replica fails fast
# after at most this long; one whose replica came back accepts changes again after at most this long.
REPLICA_CHECK_TTL_S = 0.05

UNCONFIRMED = (
    "the cluster did not confirm the operation in time: it may or may not have happened; "
    "retrying is safe (a create then answers ALREADY_EXISTS, a delete NOT_FOUND)"
)


NO_REPLICA_READ = (
    "the shard holding this partition has no replica, so the read check can't confirm its primary; "
    "nothing was read; retry once a replica has rejoined"
)
UNCONFIRMED_READ = (
    "no replica confirmed that this profile's primary is still followed, so its read was not answered "
    "(it may have been counted in the statistics); retry"
)


class _NotExecuted(Exception):
    pass


class _Ask(Exception):
    """The slot is migrating: ask the target node, once, with ASKING."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class _ReplicaCheck:
    """Whether a primary has a replica in sync, from its own INFO replication, asked at most once per TTL."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, bool]] = {}  # node name -> (checked at, has a replica)
        self._asking: dict[str, asyncio.Future[bool]] = {}

    async def has_replica(self, node: ClusterNode) -> bool:
        checked = self._known.get(node.name)
        if checked and time.monotonic() - checked[0] < REPLICA_CHECK_TTL_S:
            return checked[1]
        if node.name not in self._asking:  # one question per node at a time; concurrent callers share it
            self._asking[node.name] = asyncio.ensure_future(self._ask(node))
            self._asking[node.name].add_done_callback(lambda _: self._asking.pop(node.name, None))
        return await asyncio.shield(self._asking[node.name])

    async def _ask(self, node: ClusterNode) -> bool:
        try:
            info = await node.execute_command("INFO", "replication")
        except (RedisError, *_BROKEN) as error:  # unreachable or not ready: the change itself will say so
            log.debug("INFO replication of %s failed: %r", node.name, error)
            return True
        if info.get("role") != "master":  # a stale topology: the change gets MOVED and finds the primary
            return True
        online = any(
            isinstance(value, dict) and value.get("state") == "online"
            for name, value in info.items()
            if name.startswith("slave")
        )
        if not online and self._known.get(node.name, (0.0, True))[1]:
            log.warning(
                "%s has no replica in sync: replica-durable changes on its partitions answer UNAVAILABLE", node.name
            )
        elif online and not self._known.get(node.name, (0.0, True))[1]:
            log.info("%s has a replica again: replica-durable changes on its partitions are accepted", node.name)
        self._known[node.name] = (time.monotonic(), online)
        return online

    def forget(self, node: ClusterNode) -> None:
        self._known.pop(node.name, None)


class DurableScripts:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        timeout_ms = cluster.settings.durability_timeout_ms
        self.wait_command: tuple[Any, ...] | None = {
            "none": None,
            "local": ("WAITAOF", 1, 0, timeout_ms),
            "replica": ("WAIT", 1, timeout_ms),
        }[cluster.settings.durability]
        self.read_wait: tuple[Any, ...] | None = (
            ("WAIT", 1, timeout_ms) if cluster.settings.read_check == "replica" else None
        )
        self._replicas = _ReplicaCheck()
        self._waits = metrics.DURABILITY_WAITS.labels(cluster.settings.durability)
        self._wait_failures = metrics.DURABILITY_FAILURES.labels(cluster.settings.durability)

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], durable: bool = True) -> Any:
        """Run the script on its slot's primary, then wait for durability; retry only the provably safe.

        `durable=False`, for reads (whose only write is a statistics event): the read check's wait, if any,
        instead of the durability wait. The caller bounds the retries with a deadline (asyncio.timeout).
        """
        async with self.cluster.scripting(script) as client:
            return await self._run(client, script, keys, args, self.wait_command if durable else self.read_wait)

    async def run_many(
        self, script: AsyncScript, calls: Sequence[tuple[Sequence[str], Sequence[Any]]], retry_budget_s: float
    ) -> list[Any]:
        """Run the script once per call, without the durability wait (reads): one pipeline per primary.

        Each call's script runs on its own slot's primary, as `run` would run it, so the cluster's fixed cost
        is paid per node, not per call. The result for each call is its reply or the exception it met: one
        call's failure fails no other. A call the cluster proves it did not run (MOVED, ASK, NOSCRIPT, no
        connection) is retried alone through `run`'s path; a connection lost after sending makes each
        call on that node an unknown outcome (UNAVAILABLE), as for `run`.
        """
        results: list[Any] = [None] * len(calls)
        # Routing needs no connection; each pipeline and each retry below holds its own place within the
        # cluster's concurrency bound, so a batch never asks for more connections than the client has
        # (during a failover, many members may be retried at once).
        client = await self.cluster.connected()
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        alone: list[int] = []
        for index, (keys, _) in enumerate(calls):
            try:
                node = client.get_node_from_key(keys[0])
            except SlotNotCoveredError:
                node = None
            if node is None:
                alone.append(index)
            else:
                by_node.setdefault(node.name, (node, []))[1].append(index)

        async def on_node(node: ClusterNode, indexes: list[int]) -> None:
            commands = [("EVALSHA", script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in indexes]
            if self.read_wait:
                if not await self._replicas.has_replica(node):
                    for index in indexes:
                        results[index] = Unavailable(NO_REPLICA_READ, reason="NO_REPLICA")
                    return
                commands += [("SET", keys_module.fence_key(calls[indexes[0]][0][0]), "1"), self.read_wait]
            try:
                async with self.cluster.scripting(script, len(commands)):
                    replies = await send_on_one_connection(node, commands)
            except NothingSent:
                alone.extend(indexes)
                return
            except _BROKEN as error:
                log.warning("lost the connection to %s mid-batch: %r", node.name, error)
                for index in indexes:
                    results[index] = Unavailable(UNCONFIRMED, reason="OUTCOME_UNKNOWN")
                return
            if self.read_wait:
                self._waits.inc()
                fence_reply, wait_reply = replies[-2:]
                replies = replies[:-2]
                if isinstance(fence_reply, Exception) or not self._confirmed(self.read_wait, wait_reply):
                    self._wait_failures.inc()
                    self._replicas.forget(node)
                    for index in indexes:
                        results[index] = Unavailable(UNCONFIRMED_READ, reason="OUTCOME_UNKNOWN")
                    return
            for index, reply in zip(indexes, replies, strict=True):
                if isinstance(reply, (NoScriptError, AskError, *_NOT_EXECUTED)):
                    alone.append(index)
                else:
                    results[index] = reply

        await asyncio.gather(*(on_node(node, indexes) for node, indexes in by_node.values()))

        async def by_itself(index: int) -> None:
            keys, args = calls[index]
            try:
                # Bounded below the call's deadline, so that one member on a shard in trouble
                # can't make the whole batch miss it: the others' answers are ready.
                async with asyncio.timeout(retry_budget_s), self.cluster.scripting(script) as client:
                    results[index] = await self._run(client, script, keys, args, self.read_wait)
            except TimeoutError:
                results[index] = Unavailable(
                    "the cluster did not serve this profile's partition in time; retry later",
                    reason="PARTITION_UNAVAILABLE",
                )
            except (ServiceError, RedisError, *_BROKEN) as error:
                results[index] = error

        await asyncio.gather(*(by_itself(index) for index in alone))
        return results

    async def _run(
        self,
        client: RedisCluster,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[Any],
        wait: tuple[Any, ...] | None,
    ) -> Any:
        ask: _Ask | None = None
        attempt = 0
        while True:
            try:
                node = client.get_node(ask.host, ask.port) if ask else client.get_node_from_key(keys[0])
                if node is None:  # an ASK to a node the client does not know yet
                    raise _NotExecuted("unknown node")
                if wait and wait[0] == "WAIT" and not await self._replicas.has_replica(node):
                    read = wait is self.read_wait
                    raise Unavailable(NO_REPLICA_READ if read else NO_REPLICA, reason="NO_REPLICA")
                return await self._run_once(node, script, keys, args, wait, asking=ask is not None)
            except _Ask as redirect:
                metrics.CLUSTER_REDIRECTS.labels("ask").inc()
                ask = redirect
            except SlotNotCoveredError:
                # No node serves the partition any more (its whole shard is down): say so now
                # rather than retrying until the deadline. Other partitions keep working.
                await self.cluster.refresh_topology()
                raise Unavailable(
                    "this profile's partition is unavailable (its shard is down); retry later",
                    reason="PARTITION_UNAVAILABLE",
                ) from None
            except _NotExecuted as reason:
                ask = None
                log.debug("not executed, retrying: %s", reason)
                metrics.CLUSTER_RETRIES.inc()
                await self.cluster.refresh_topology()
                await asyncio.sleep(min(MAX_BACKOFF_S, 0.01 * 2**attempt))
                attempt += 1

    async def _run_once(
        self,
        node: ClusterNode,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[Any],
        wait: tuple[Any, ...] | None,
        asking: bool,
    ) -> Any:
        commands: list[tuple[Any, ...]] = [("ASKING",)] if asking else []
        commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
        if wait and self.read_wait:
            # The read check: WAIT counts from the connection's last write, and a read of nothing, or a
            # change that found nothing to do (ALREADY_EXISTS, NOT_FOUND), writes nothing, so the fence
            # moves it to now: the answer is confirmed only once a replica has all the primary has.
            commands.append(("SET", keys_module.fence_key(keys[0]), "1"))
        if wait:
            commands.append(wait)
        try:
            replies = await send_on_one_connection(node, commands)
        except NothingSent as error:
            raise _NotExecuted(str(error)) from error
        except _BROKEN as error:
            log.warning("lost the connection to %s mid-operation: %r", node.name, error)
            raise Unavailable(UNCONFIRMED, reason="OUTCOME_UNKNOWN") from error
        result = replies[1 if asking else 0]
        if isinstance(result, NoScriptError):
            await node.execute_command("SCRIPT", "LOAD", script.script)
            raise _NotExecuted("script loaded")
        if isinstance(result, MovedError):
            metrics.CLUSTER_REDIRECTS.labels("moved").inc()
        if isinstance(result, _NOT_EXECUTED):  # MovedError before AskError: it is a subclass
            raise _NotExecuted(repr(result))
        if isinstance(result, AskError):
            raise _Ask(result.host, result.port)
        if isinstance(result, ResponseError):
            raise result
        if wait:
            self._waits.inc()
            if not self._confirmed(wait, replies[-1]):
                self._wait_failures.inc()
                self._replicas.forget(node)  # perhaps the replica just went away: look again next time
                raise Unavailable(UNCONFIRMED_READ if wait is self.read_wait else UNCONFIRMED, reason="OUTCOME_UNKNOWN")
        return result

    @staticmethod
    def _confirmed(wait: tuple[Any, ...], reply: Any) -> bool:
        if isinstance(reply, Exception):
            return False
        if wait[0] == "WAITAOF":  # [fsynced locally, fsynced on replicas]
            return int(reply[0]) >= 1
        return int(reply) >= 1  # WAIT: replicas that have the write
