"""Small clients the tests share: HTTP to the gateway, waiting for the aggregator."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from google.rpc import error_details_pb2
from grpc_status import rpc_status
from redis.cluster import RedisCluster

from common.storage import functions, keys
from localdev.system import System
from localdev.waiting import poll_until

T = TypeVar("T")


def http_call(port: int, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """One request to the gateway; returns the status and the decoded JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        reply = connection.getresponse()
        payload = reply.read()
        assert reply.getheader("Content-Type", "").startswith("application/json"), payload[:200]
        return reply.status, json.loads(payload)
    finally:
        connection.close()


def metric_sum(metrics_url: str, series: str, containing: str = "") -> float:
    """The sum of a process's /metrics samples named `series` (over its labels) whose line holds `containing`."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.partition("{")[0].partition(" ")[0] == series and containing in line
    )


def on_every_partition(
    client: RedisCluster, partitions: int, command: Callable[[Any, int], object], raise_on_error: bool = True
) -> list[Any]:
    """Each partition's reply to `command(pipe, partition)`, in partition order: one pipeline per primary, so that
    a look at every partition costs a round trip per node, not one per partition (the suite may run at 4,096).
    With `raise_on_error=False`, a partition's error is its reply."""
    with client.pipeline(transaction=False) as pipe:
        for partition in range(partitions):
            command(pipe, partition)
        return pipe.execute(raise_on_error=raise_on_error)


def wait_for_every_wake_flag(system: System, partitions: int) -> None:
    """Until the aggregator has taken every partition once, which arms its wake flag (apply_events.lua): before
    that, a partition's first event waits for that first take. Just after a start at 4,096 partitions that is up to
    a few seconds of the startup's takes, which a test of how fresh the statistics are would count."""
    client = system.cluster.client()
    try:
        wait_until(
            lambda: all(on_every_partition(client, partitions, lambda pipe, p: pipe.exists(keys.wake_key(p)))),
            60,
            what="the aggregator to have taken every partition once",
        )
    finally:
        client.close()


def creates_counted(system: System, partitions: int) -> int:
    """The creates the aggregator has counted, over every partition's totals."""
    client = system.cluster.client(decode_responses=True)
    try:
        counts = on_every_partition(client, partitions, lambda pipe, p: pipe.hget(keys.totals_key(p), "create"))
        return sum(int(count or 0) for count in counts)
    finally:
        client.close()


def calls_answered(metrics_url: str, method: str) -> float:
    """How many calls of the gRPC `method` (e.g. BatchGetProfiles) a service has answered, from its /metrics."""
    return metric_sum(metrics_url, "profilemesh_grpc_server_requests_total", f'/{method}"')


def status_details(error: Any) -> dict[str, Any]:
    """The google.rpc details (ErrorInfo, BadRequest) of a failed call's status, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    details: dict[str, Any] = {}
    for packed in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if packed.Is(kind.DESCRIPTOR):
                details[kind.DESCRIPTOR.name] = kind()
                packed.Unpack(details[kind.DESCRIPTOR.name])
    return details


def wait_until(condition: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.1, what: str = "") -> Any:
    """Poll until condition() is truthy; the aggregator is asynchronous, so tests wait for it.

    A timeout fails the test (AssertionError) rather than erroring it."""
    try:
        return poll_until(condition, timeout_s, what or str(condition), interval_s)
    except TimeoutError as error:
        raise AssertionError(str(error)) from None


def read_events(client: RedisCluster, partitions: int) -> Counter:
    """Read events per user in every partition's stream (a test's audit group keeps them from trimming)."""
    counted: Counter = Counter()
    for entries in on_every_partition(client, partitions, lambda pipe, p: pipe.xrange(keys.events_key(p))):
        for _, fields in entries:
            if fields["type"] == "read":
                counted[fields["user"]] += 1
    return counted


def expected_statistics(history: Iterable[tuple[str, str]]) -> tuple[dict[str, int], dict[str, int]]:
    """What the aggregator must end with for a history of (user, type) events in stream order:
    each user's reads since its latest delete (users with none left out), and a count per type."""
    scores: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for user, kind in history:
        totals[kind] += 1
        if kind == "read":
            scores[user] += 1
        elif kind == "delete":
            scores.pop(user, None)
    return {user: n for user, n in scores.items() if n}, dict(totals)


def history_of(client: RedisCluster, partitions: int, users: set[str]) -> list[tuple[str, str]]:
    """The (user, type) events of these users that the streams hold (a test's audit group keeps them)."""
    return [
        (fields["user"], fields["type"])
        for entries in on_every_partition(client, partitions, lambda pipe, p: pipe.xrange(keys.events_key(p)))
        for _, fields in entries
        if fields["user"] in users
    ]


def scores_of(client: RedisCluster, partitions: int, users: Iterable[str]) -> dict[str, int]:
    """The users' read counts in the statistics, as the aggregator left them (users without one left out)."""
    scores = {user: client.zscore(keys.reads_key(keys.partition_of(user, partitions)), user) for user in users}
    return {user: int(score) for user, score in scores.items() if score}


def aggregator_settled(client: RedisCluster, partitions: int, group: str = "aggregator") -> bool:
    """The aggregator's group has consumed and acknowledged everything (nothing pending, nothing unread), and the
    top list's index holds what was counted (every partition indexed, no note left in its outbox)."""
    every_group = on_every_partition(
        client, partitions, lambda pipe, p: pipe.xinfo_groups(keys.events_key(p)), raise_on_error=False
    )
    for groups in every_group:
        if isinstance(groups, Exception):  # no stream yet: its first take has yet to make the group
            return False
        for info in groups:
            if info["name"] == group and (info["pending"] or info["lag"]):
                return False
    return top_index_settled(client, partitions)


def top_index_settled(client: RedisCluster, partitions: int) -> bool:
    """Every partition's users are in the top list's index as counted: each outbox marked indexed and empty."""
    for outbox in on_every_partition(client, partitions, lambda pipe, p: pipe.hgetall(keys.top_outbox_key(p))):
        names = {name.decode() if isinstance(name, bytes) else name for name in outbox}
        if "#indexed" not in names or names - {"#indexed", "#version"}:
            return False
    return True


def load_functions(client: Any) -> None:
    """Every function library loaded into a standalone node of the tests' own, as `profilemesh cluster migrate`
    loads them into a cluster's primaries (REPLACE: a node that has them already is left as it was)."""
    for library in functions.libraries():
        client.function_load(library.source, replace=True)


class FunctionCall:
    """A product function (made from a .lua file, common/storage/functions.py) called as redis-py's Script is:
    `f(keys=..., args=..., client=...)`, by FCALL (FCALL_RO for a no-writes one) on `client`, else its own."""

    def __init__(self, path: Path, client: Any = None) -> None:
        self.function = functions.function(path)
        self.client = client

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> tuple[Any, ...]:
        return (self.function.command, self.function.name, len(keys), *keys, *args)

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        return (client if client is not None else self.client).execute_command(*self.command(keys, args))


def is_function_call(command: str | bytes) -> bool:
    """Whether a SLOWLOG entry's command is a function's call (how the timing tests pick them out)."""
    return (command.decode() if isinstance(command, bytes) else command).upper().startswith("FCALL")


def run_scenario(scenario: Coroutine[Any, Any, T], cleanup_s: float = 10) -> T:
    """asyncio.run, except that a task the scenario leaves behind which outlives its cancellation by `cleanup_s`
    fails the test with every task's stack, rather than holding asyncio.run (and the suite) until pytest's
    timeout with nothing to say which task it was."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(scenario)
    finally:
        try:
            stuck = loop.run_until_complete(_cancel_leftovers(cleanup_s))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), cleanup_s))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), cleanup_s))
            assert not stuck, f"tasks still running {cleanup_s:g} s after their cancellation:\n{stuck}"
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _cancel_leftovers(within_s: float) -> str:
    """Cancel every other task and wait up to `within_s`; the stacks of all left when some are still running."""
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    if not leftovers:
        return ""
    _, running = await asyncio.wait(leftovers, timeout=within_s)
    if not running:
        return ""
    stacks = io.StringIO()
    for task in asyncio.all_tasks() - {asyncio.current_task()}:  # the stuck ones and whatever they wait for
        task.print_stack(file=stacks)
    return stacks.getvalue()
