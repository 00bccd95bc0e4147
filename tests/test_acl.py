"""Least privilege in the cluster: each component's ACL user (common/storage/acl.py) can do its job and nothing else.

The session's system runs every service as its own user with the default user off, so every other test
passing is the proof that the users can do their jobs; here, what they must not do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.retry import Retry

from aggregator_svc.aggregator import APPLY_SCRIPT
from common.storage import acl, functions, keys
from localdev.system import System
from profile_svc.profiles import SCRIPTS as PROFILE_SCRIPTS
from profile_svc.profiles import script_keys
from reporting_svc.reports import SCRIPTS as REPORTING_SCRIPTS
from tests.conftest import PARTITIONS

PROFILE = keys.profile_key("acl-someone", PARTITIONS)
PARTITION = keys.partition_of("acl-someone", PARTITIONS)
EVENTS, READS, TOTALS = keys.events_key(PARTITION), keys.reads_key(PARTITION), keys.totals_key(PARTITION)

Check = Callable[[RedisCluster], Any]

# The reporting user's busy loop of issue 20: 7.4 s of a primary's time when EVAL was allowed.
BUSY_LOOP = "local x=0 for i=1,1000000000 do x=x+1 end return x"
APPLY = functions.function(APPLY_SCRIPT)
GET = functions.function(PROFILE_SCRIPTS / "get_profile.lua")
TOP = functions.function(REPORTING_SCRIPTS / "top_readers.lua")


def _fcall(function: functions.Function, keys: list[str], args: list[Any], command: str = "") -> Check:
    return lambda c: c.execute_command(command or function.command, function.name, len(keys), *keys, *args)


# What every component's user must be refused: the whole cluster's data and configuration, and running code of
# its own choosing (scripts, or loading functions): only the admin step loads the functions they call.
FORBIDDEN_TO_ALL: dict[str, Check] = {
    "EVAL a busy loop": lambda c: c.eval(BUSY_LOOP, 0),
    "EVAL on a key": lambda c: c.eval("return redis.call('TIME')", 1, EVENTS),
    "SCRIPT LOAD": lambda c: c.script_load(BUSY_LOOP),
    "EVALSHA": lambda c: c.evalsha("a" * 40, 1, EVENTS),
    "FUNCTION LOAD": lambda c: c.function_load(
        "#!lua name=mallory\nredis.register_function('spin', function() while true do end end)"
    ),
    "FUNCTION DELETE": lambda c: c.function_delete(functions.library("profile").name),
    "FUNCTION FLUSH": lambda c: c.function_flush(),
    "FUNCTION RESTORE": lambda c: c.function_restore(b"x"),
    "FUNCTION KILL": lambda c: c.execute_command("FUNCTION", "KILL", target_nodes=c.get_primaries()),
    "FLUSHALL": lambda c: c.flushall(),
    "CONFIG GET": lambda c: c.config_get("requirepass"),
    "CONFIG SET": lambda c: c.config_set("appendonly", "no"),
    "KEYS": lambda c: c.keys("*"),
    "ACL LIST": lambda c: c.acl_list(),
    "SCRIPT FLUSH": lambda c: c.script_flush(),
    "CLIENT LIST": lambda c: c.client_list(),
    "DEL a stream": lambda c: c.delete(EVENTS),
    "a key outside the layout": lambda c: c.set("elsewhere", "1"),
}

FORBIDDEN: dict[str, dict[str, Check]] = {
    "profile_svc": {
        "write statistics": lambda c: c.zadd(READS, {"mallory": 1000}),
        "read statistics": lambda c: c.hgetall(TOTALS),
        "trim a stream": lambda c: c.xtrim(EVENTS, maxlen=0),
        # The two: rights needed on profiles reached the streams, and SET the partition count.
        "UNLINK a stream": lambda c: c.unlink(EVENTS),
        "overwrite the partition count": lambda c: c.set(keys.PARTITIONS_KEY, str(PARTITIONS)),
        "statistics through a function": _fcall(APPLY, [EVENTS, READS, TOTALS, TOTALS, READS, TOTALS], ["g", "1-1"]),
    },
    "aggregator_svc": {
        "read a profile": lambda c: c.hgetall(PROFILE),
        "write a profile": lambda c: c.hset(PROFILE, "email", "x@example.com"),
        "append an event": lambda c: c.xadd(EVENTS, {"user": "mallory", "type": "read", "ts": "0"}),
        "record the partition count": lambda c: c.set(keys.PARTITIONS_KEY, "3"),
        "a profile through a function": _fcall(GET, script_keys("acl-someone", PARTITIONS), ["acl-someone"]),
    },
    "reporting_svc": {
        "read a profile": lambda c: c.hgetall(PROFILE),
        "read the events": lambda c: c.xrange(EVENTS, count=1),
        "write statistics": lambda c: c.zadd(READS, {"mallory": 1000}),
        "a writing function": _fcall(APPLY, [EVENTS, READS, TOTALS, TOTALS, READS, TOTALS], ["g", "1-1"]),
        "its own function by FCALL": _fcall(TOP, [READS], [3], command="FCALL"),
        "delete statistics": lambda c: c.delete(TOTALS),
        "record the partition count": lambda c: c.set(keys.PARTITIONS_KEY, "3"),
    },
}


@pytest.fixture(scope="module")
def clients(system: System) -> Iterator[dict[str, RedisCluster]]:
    opened = {component: system.cluster.client(user) for component, user in acl.USERS.items()}
    yield opened
    for client in opened.values():
        client.close()


@pytest.mark.parametrize(
    ("component", "what"),
    [(c, w) for c in acl.USERS for w in FORBIDDEN_TO_ALL] + [(c, w) for c, checks in FORBIDDEN.items() for w in checks],
)
def test_each_user_is_refused_what_is_not_its_job(
    clients: dict[str, RedisCluster], redis_client: RedisCluster, component: str, what: str
) -> None:
    before = {key: redis_client.exists(key) for key in (PROFILE, READS, TOTALS, "elsewhere")}
    check = FORBIDDEN_TO_ALL.get(what) or FORBIDDEN[component][what]
    # NOPERM, or (a command inside a script whose keys the user may touch) "ACL failure in script".
    with pytest.raises(ResponseError, match="(?i)NOPERM|no permissions|ACL failure"):
        check(clients[component])
    assert {key: redis_client.exists(key) for key in before} == before
    assert redis_client.dbsize() > 0  # nothing was flushed


def test_each_user_runs_its_functions_and_the_busy_loop_never_runs(
    clients: dict[str, RedisCluster], redis_client: RedisCluster
) -> None:
    """What they lost is what they never needed: the same users call their functions (reporting by FCALL_RO), and
    the busy loop, refused to each, took no server time (no EVAL in the command statistics of any node)."""
    reads = keys.reads_key(PARTITIONS + 1)  # of a partition beyond the suite's count, which no aggregator counts into
    redis_client.zadd(reads, {"ann": 2, "bob": 1})
    try:
        assert _fcall(TOP, [reads], [2])(clients["reporting_svc"])[:4] == [b"ann", b"2", b"bob", b"1"]
        assert _fcall(GET, script_keys("acl-someone", PARTITIONS), ["acl-someone"])(clients["profile_svc"]) is None
    finally:
        redis_client.delete(reads)
    before = _evals_run(redis_client)
    for component in acl.USERS:
        with pytest.raises(NoPermissionError):
            clients[component].eval(BUSY_LOOP, 0)
    assert _evals_run(redis_client) == before


def _evals_run(client: RedisCluster) -> dict[str, int]:
    """EVAL calls each node ran (refused ones count in rejected_calls, not in calls)."""
    return {
        node.name: int(client.info("commandstats", target_nodes=node).get("cmdstat_eval", {}).get("calls", 0))
        for node in client.get_nodes()
    }


def test_each_user_can_do_its_job(clients: dict[str, RedisCluster], redis_client: RedisCluster) -> None:
    """The same clients are not simply refused everything: each reads or writes what its role covers."""
    # Totals of the test's own: of a partition beyond the suite's count, which no aggregator counts into.
    totals = keys.totals_key(PARTITIONS + 1)
    redis_client.hset(PROFILE, "email", "someone@example.com")
    redis_client.hset(totals, "read", 1)
    try:
        assert clients["profile_svc"].hgetall(PROFILE) == {b"email": b"someone@example.com"}
        assert clients["aggregator_svc"].hincrby(totals, "read", 1) == 2
        assert clients["reporting_svc"].hgetall(totals) == {b"read": b"2"}
        assert clients["reporting_svc"].get(keys.PARTITIONS_KEY) == str(PARTITIONS).encode()
    finally:
        redis_client.delete(PROFILE, totals)


def test_the_default_user_is_refused(system: System) -> None:
    for index in range(len(system.cluster.ports)):
        # No retries: redis-py counts a refused login as a connection error and would retry it with backoff.
        anonymous = redis.Redis(port=system.cluster.ports[index], socket_timeout=2, retry=Retry(NoBackoff(), 0))
        with pytest.raises(AuthenticationError):
            anonymous.ping()
        with pytest.raises(AuthenticationError):
            anonymous.execute_command("AUTH", "default", "")
        anonymous.close()


def test_services_connect_only_as_their_own_users(system: System) -> None:
    """Every connection to every node belongs to a profilemesh user: none to the default user."""
    seen: set[str] = set()
    for index in range(len(system.cluster.ports)):
        for connection in system.cluster.node(index).client_list():
            seen.add(connection["user"])
    # "(superuser)": a replica's link to its primary, which the server itself opens.
    assert seen <= {*acl.all_users(), "(superuser)"}
    assert set(acl.USERS.values()) <= seen, f"every component's user is connected: {seen}"


def test_the_acl_matrix_on_valkey(system: System) -> None:
    """tests/test_acl_matrix.py's matrix on the session's Valkey cluster (WAITAOF included): the same table."""
    from tests.test_acl_matrix import check_matrix

    counted = check_matrix(system.cluster.node(0), waitaof=True)
    print(f"ACL matrix (Valkey): {counted} cases")
