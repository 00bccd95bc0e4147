"""The one way profilemesh runs a script on the cluster, and what each reply proves.

A script runs on its first key's primary over one of that node's own connections, pipelined with the
confirmation its caller asks for: `WAIT` and `WAITAOF` speak only for the writes of their own connection.
It is run again only where the cluster proves it did not run (no connection could be made, or a reply in
errors.NOT_EXECUTED: a redirect, a cluster between states). Scripts are functions loaded by an admin step
(common/storage/functions.py): a node without this version's library fails the call (FunctionsNotLoaded:
UNAVAILABLE to callers, waited out by loops), since a service may not load code. A
connection lost after sending is an unknown outcome and reported as such (UNAVAILABLE, OUTCOME_UNKNOWN),
never retried behind the caller's back, because a create that ran and is retried would answer
ALREADY_EXISTS to a caller whose create succeeded; only a script registered as `repeatable` (a read, or
an aggregator step that is a no-op the second time) is simply run again. Retries go on until the
caller's deadline (asyncio.timeout), with a backoff.

Confirmations (common/storage/durability.py): a change waits for its durability level; a read is
followed, with PROFILEMESH_READ_CHECK=replica, by a fence write and WAIT 1, so an old primary that was
paused or cut off can't answer with data its shard no longer has. Where a replica must confirm and the
primary has none in sync, the operation is refused before it runs (NO_REPLICA): WAIT could only time out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import AskError, MovedError, ResponseError, SlotNotCoveredError

from common.errors import FunctionsNotLoaded, ServiceError, StorageError, Unavailable
from common.runtime import metrics
from common.storage import functions
from common.storage.connection import MAX_BACKOFF_S, Connection, Script
from common.storage.durability import Confirm, Waits
from common.storage.errors import BROKEN, NOT_EXECUTED, neutral
from common.storage.group_commit import GroupCommit
from common.storage.internals import NothingSent, send_on_one_connection
from common.storage.keys import fence_key
from common.storage.replicas import ReplicaCheck

log = logging.getLogger(__name__)

UNCONFIRMED = (
    "the cluster did not confirm the operation in time: it may or may not have happened; "
    "retrying is safe (a create then answers ALREADY_EXISTS, a delete NOT_FOUND)"
)
UNCONFIRMED_READ = (
    "no replica confirmed that this profile's primary is still followed, so its read was not answered "
    "(it may have been counted in the statistics); retry"
)
NO_REPLICA = (
    "the shard holding this partition has no replica; replica durability can't be confirmed, "
    "so nothing was changed; retry once a replica has rejoined"
)
NO_REPLICA_READ = (
    "the shard holding this partition has no replica, so the read check can't confirm its primary; "
    "nothing was read; retry once a replica has rejoined"
)
PARTITION_DOWN = "this profile's partition is unavailable (its shard is down); retry later"
PARTITION_SLOW = "the cluster did not serve this profile's partition in time; retry later"


class NotExecuted(Exception):
    """The cluster proved the script did not run: running it again is safe."""


class Ask(NotExecuted):
    """The slot is migrating: ask the target node, once, with ASKING."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"ASK {host}:{port}")
        self.host, self.port = host, port


def judge(script: Script, reply: Any) -> Any:
    """The script's reply as its result, or the exception that says what happened instead.

    Raises NotExecuted (or its kinds) when the reply proves the script did not run, and the reply's own
    error, storage-neutral, when the script ran and failed.
    """
    if isinstance(reply, ResponseError) and functions.is_missing(reply):
        # A primary the admin step has not loaded (one added since): nothing to retry until it has.
        raise FunctionsNotLoaded(f"{script.function}: {reply}", code="ERR")
    if isinstance(reply, MovedError):  # before AskError: it is a subclass
        metrics.CLUSTER_REDIRECTS.labels("moved").inc()
        raise NotExecuted(repr(reply))
    if isinstance(reply, AskError):
        metrics.CLUSTER_REDIRECTS.labels("ask").inc()
        raise Ask(reply.host, reply.port)
    if isinstance(reply, NOT_EXECUTED):
        raise NotExecuted(repr(reply))
    if isinstance(reply, ResponseError):
        raise neutral(reply) or reply
    return reply


def unconfirmed(confirm: Confirm) -> Unavailable:
    return Unavailable(UNCONFIRMED_READ if confirm is Confirm.READ else UNCONFIRMED, reason="OUTCOME_UNKNOWN")


def _connection_lost(script: Script, node: ClusterNode, error: Exception) -> Exception:
    """What a connection lost after sending means: a script safe to run again (a read, the aggregator's
    steps) did not provably run, so it runs again; a change's outcome is unknown."""
    if script.repeatable:
        return NotExecuted(f"connection lost under a repeatable script: {error!r}")
    log.warning("lost the connection to %s mid-operation: %r", node.name, error)
    return unconfirmed(Confirm.NOTHING)


class ScriptRunner:
    def __init__(self, connection: Connection, waits: Waits) -> None:
        self.connection = connection
        self.waits = waits
        self.replicas = ReplicaCheck()
        self.group_commit = GroupCommit(waits.write, metrics.GROUP_COMMIT_SIZE) if waits.write else None
        self._confirmations = metrics.DURABILITY_WAITS.labels(waits.durability)
        self._unconfirmed = metrics.DURABILITY_FAILURES.labels(waits.durability)

    async def run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        confirm: Confirm = Confirm.NOTHING,
        bounded: bool = True,
        together: bool = False,
    ) -> Any:
        """Run the script on its slot's primary, then the confirmation asked for; retry only the provably safe.

        `bounded=False` for a loop that has room reserved beyond the concurrency bound (the aggregator's
        partitions, the change feed's tail reads). `together` (with nothing to confirm) for many loops that wake
        at once: their scripts share one pipeline per primary. The caller bounds the retries with a deadline
        (asyncio.timeout).
        """
        return await self._run(script, keys, args, confirm, together, bounded)

    async def run_many(
        self,
        script: Script,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        retry_budget_s: float,
        confirm: Confirm = Confirm.READ,
    ) -> list[Any]:
        """Run the script once per call, each confirmed as `confirm` asks (a read, or NOTHING): one pipeline per
        primary.

        Each call's script runs on its own slot's primary, as `run` would run it, so the cluster's fixed cost
        is paid per node, not per call. The result for each call is its reply or the exception it met: one
        call's failure fails no other. A call the cluster proves it did not run is retried alone, within
        `retry_budget_s`; a connection lost after sending makes each call on that node an unknown outcome.
        """
        results: list[Any] = [None] * len(calls)
        # The calls by the primary of their first key; those with no known primary run alone. Routing needs no
        # connection: each pipeline and each retry holds its own place within the concurrency bound, so a batch
        # never asks for more connections than the client has.
        by_node, alone = await self.connection.by_primary([call_keys[0] for call_keys, _ in calls])
        await asyncio.gather(
            *(self._on_node(script, calls, node, members, results, confirm) for node, members in by_node)
        )
        alone += [index for index, result in enumerate(results) if isinstance(result, NotExecuted)]
        await asyncio.gather(
            *(self._alone(script, calls[index], index, results, retry_budget_s, confirm) for index in alone)
        )
        return results

    async def _on_node(
        self,
        script: Script,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        node: ClusterNode,
        members: list[int],
        results: list[Any],
        confirm: Confirm = Confirm.READ,
    ) -> None:
        """One pipeline of the members' scripts on their primary (and, for a read, the read check's fence and WAIT)."""
        wait = self.waits.command(confirm)
        commands: list[tuple[Any, ...]] = [script.command(calls[i][0], calls[i][1]) for i in members]
        if wait:
            if not await self.replicas.has_replica(node):
                for index in members:
                    results[index] = Unavailable(NO_REPLICA_READ, reason="NO_REPLICA")
                return
            commands += [("SET", fence_key(calls[members[0]][0][0]), "1"), wait]
        async with self.connection.scripting(script, len(commands)):
            # Caught inside `scripting`, which would make a lost connection the whole batch's ClusterUnavailable.
            try:
                replies = await send_on_one_connection(node, commands)
            except NothingSent as error:
                for index in members:
                    results[index] = NotExecuted(str(error))
                return
            except BROKEN as error:
                outcome = _connection_lost(script, node, error)  # a repeatable member is retried alone
                for index in members:
                    results[index] = outcome
                return
        if wait:
            replies, fence, confirmation = replies[:-2], replies[-2], replies[-1]
            if not self._confirmed(node, wait, fence if isinstance(fence, Exception) else confirmation):
                for index in members:
                    results[index] = unconfirmed(Confirm.READ)
                return
        for index, reply in zip(members, replies, strict=True):
            try:
                results[index] = judge(script, reply)
            except (NotExecuted, StorageError) as outcome:
                results[index] = outcome

    async def _alone(
        self,
        script: Script,
        call: tuple[Sequence[str], Sequence[Any]],
        index: int,
        results: list[Any],
        retry_budget_s: float,
        confirm: Confirm = Confirm.READ,
    ) -> None:
        """One member of a batch run by itself, within a budget below the call's deadline, so that one member
        on a shard in trouble can't make the whole batch miss it: the others' answers are ready."""
        try:
            async with asyncio.timeout(retry_budget_s):
                results[index] = await self._run(script, call[0], call[1], confirm, together=False)
        except TimeoutError:
            results[index] = Unavailable(PARTITION_SLOW, reason="PARTITION_UNAVAILABLE")
        except (ServiceError, StorageError) as error:
            results[index] = error

    async def _run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        confirm: Confirm,
        together: bool,
        bounded: bool = True,
    ) -> Any:
        """Attempts until one is not provably unexecuted. Each attempt holds a place within the concurrency
        bound, the backoff between them none: a shard that is down refuses at once, and its partitions'
        retries, without a deadline in the aggregator's loops, must not keep the healthy partitions' calls
        waiting for a place (at 4,096 partitions a third of them are on the shard)."""
        ask: Ask | None = None
        attempt = 0
        while True:
            async with self.connection.scripting(script, bounded=bounded) as client:
                try:
                    node = client.get_node(ask.host, ask.port) if ask else client.get_node_from_key(keys[0])
                    if node is None:  # an ASK to a node the client does not know yet
                        raise NotExecuted("unknown node")
                    return await self._run_once(node, script, keys, args, confirm, ask is not None, together)
                except Ask as redirect:
                    ask = redirect
                    continue
                except SlotNotCoveredError:
                    not_run: NotExecuted | None = None  # no node serves the slot
                except NotExecuted as reason:
                    not_run = reason
            if not_run is None:
                # No node serves the partition any more (its whole shard is down): say so now
                # rather than retrying until the deadline. Other partitions keep working.
                await self.connection.refresh_topology()
                raise Unavailable(PARTITION_DOWN, reason="PARTITION_UNAVAILABLE") from None
            ask = None
            log.debug("not executed, retrying: %s", not_run)
            metrics.CLUSTER_RETRIES.inc()
            await self.connection.refresh_topology()
            await asyncio.sleep(min(MAX_BACKOFF_S, 0.01 * 2**attempt))
            attempt += 1

    async def _run_once(
        self,
        node: ClusterNode,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        confirm: Confirm,
        asking: bool,
        together: bool,
    ) -> Any:
        wait = self.waits.command(confirm)
        if wait and wait[0] == "WAIT" and not await self.replicas.has_replica(node):
            raise Unavailable(NO_REPLICA_READ if confirm is Confirm.READ else NO_REPLICA, reason="NO_REPLICA")
        commands: list[tuple[Any, ...]] = [("ASKING",)] if asking else []
        commands.append(script.command(keys, args))
        if wait and confirm is Confirm.READ:
            # WAIT counts from the connection's last write, and a read of nothing, or a change that found
            # nothing to do, writes nothing, so the fence moves it to now: the answer is confirmed only once
            # a replica has all the primary has.
            commands.append(("SET", fence_key(keys[0]), "1"))
        if wait:
            commands.append(wait)
        try:
            if self.group_commit and confirm is Confirm.WRITE and not asking:
                replies = list(await self.group_commit.send(node, commands[0]))
            elif together and not wait and not asking:
                replies = [(await self.connection.shared.send(node, commands[0]))[0]]
            else:
                replies = await send_on_one_connection(node, commands)
        except NothingSent as error:
            raise NotExecuted(str(error)) from error
        except BROKEN as error:
            raise _connection_lost(script, node, error) from error
        result = judge(script, replies[1 if asking else 0])
        if wait and not self._confirmed(node, wait, replies[-1]):
            raise unconfirmed(confirm)
        return result

    def _confirmed(self, node: ClusterNode, wait: tuple[Any, ...], reply: Any) -> bool:
        self._confirmations.inc()
        if Waits.confirmed(wait, reply):
            return True
        self._unconfirmed.inc()
        self.replicas.forget(node)  # perhaps the replica just went away: look again next time
        return False
