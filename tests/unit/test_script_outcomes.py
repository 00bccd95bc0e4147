"""What a script's reply proves, as the runner judges it (common/storage/runner.py, durability.py, errors.py):
retried only when the cluster proves it did not run; a script's own error fails its caller; a wait that does
not confirm is an unknown outcome, never a success."""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions as redis_errors

from common.errors import (
    ClusterBusy,
    ClusterUnavailable,
    CommandFailed,
    GroupExists,
    NoGroup,
    NotPermitted,
)
from common.runtime.config import Durability, ReadCheck
from common.storage.connection import Script
from common.storage.durability import Confirm, Waits
from common.storage.errors import neutral
from common.storage.runner import Ask, NotExecuted, NotLoaded, judge

SCRIPT = Script("write_profile", "return 1", repeatable=False)

NOT_RUN = [
    redis_errors.MovedError("3999 127.0.0.1:7001"),
    redis_errors.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
    redis_errors.MasterDownError("MASTERDOWN Link with MASTER is down"),
    redis_errors.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    redis_errors.ReadOnlyError("READONLY You can't write against a read only replica."),
]


@pytest.mark.parametrize("reply", NOT_RUN, ids=[type(r).__name__ for r in NOT_RUN])
def test_replies_that_prove_the_script_did_not_run_are_retried(reply: Exception) -> None:
    with pytest.raises(NotExecuted):
        judge(SCRIPT, reply)


def test_an_ask_names_the_node_to_ask() -> None:
    with pytest.raises(Ask) as caught:
        judge(SCRIPT, redis_errors.AskError("3999 127.0.0.1:7004"))
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", 7004)


def test_a_node_without_the_script_is_told_to_load_it() -> None:
    with pytest.raises(NotLoaded):
        judge(SCRIPT, redis_errors.NoScriptError("NOSCRIPT No matching script."))


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (redis_errors.ResponseError("ERR user_script:12: bad field"), CommandFailed),
        (redis_errors.ResponseError("NOGROUP No such key 'events:{p00}' or consumer group"), NoGroup),
        (redis_errors.ResponseError("BUSYGROUP Consumer Group name already exists"), GroupExists),
        (redis_errors.NoPermissionError("NOPERM User has no permissions"), NotPermitted),
    ],
)
def test_a_script_that_ran_and_failed_fails_its_caller_only(reply: Exception, kind: type[CommandFailed]) -> None:
    """Not retried (it ran), and typed by the reply's error code, never by the rest of its message."""
    with pytest.raises(kind) as caught:
        judge(SCRIPT, reply)
    assert type(caught.value) is kind
    assert caught.value.code == str(reply).split(" ")[0]


@pytest.mark.parametrize("reply", [1, 0, None, [b"name", b"ada"], b"ok"])
def test_any_other_reply_is_the_result(reply: Any) -> None:
    assert judge(SCRIPT, reply) == reply


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis_errors.MaxConnectionsError("pool exhausted"), ClusterBusy),
        (redis_errors.ConnectionError("refused"), ClusterUnavailable),
        (redis_errors.TimeoutError("slow"), ClusterUnavailable),
        (redis_errors.RedisClusterException("no node reachable"), ClusterUnavailable),
        (ConnectionResetError("reset"), ClusterUnavailable),
        (redis_errors.ResponseError("NOGROUP gone"), NoGroup),
    ],
)
def test_client_failures_leave_the_storage_layer_neutral(error: Exception, kind: type[Exception]) -> None:
    assert type(neutral(error)) is kind


def test_a_bug_is_not_taken_for_a_cluster_failure() -> None:
    assert neutral(KeyError("slot")) is None


@pytest.mark.parametrize(
    ("durability", "reply", "confirmed"),
    [
        (Durability.REPLICA, 1, True),
        (Durability.REPLICA, 0, False),  # WAIT timed out: no replica has it
        (Durability.LOCAL, [1, 0], True),  # fsynced locally, no replica needed
        (Durability.LOCAL, [0, 1], False),  # a replica has it, but this level asks for the local fsync
        (Durability.REPLICA, redis_errors.ResponseError("ERR WAIT cannot be used with replica instances"), False),
    ],
)
def test_a_change_is_confirmed_only_by_its_wait(durability: Durability, reply: Any, confirmed: bool) -> None:
    waits = Waits(durability, ReadCheck.NONE, timeout_ms=1000)
    wait = waits.command(Confirm.WRITE)
    assert wait is not None
    assert Waits.confirmed(wait, reply) is confirmed


def test_what_each_operation_waits_for() -> None:
    waits = Waits(Durability.REPLICA, ReadCheck.NONE, timeout_ms=250)
    assert waits.command(Confirm.WRITE) == ("WAIT", 1, 250)
    assert waits.command(Confirm.READ) is None and waits.command(Confirm.NOTHING) is None
    checked = Waits(Durability.LOCAL, ReadCheck.REPLICA, timeout_ms=250)
    assert checked.command(Confirm.WRITE) == ("WAITAOF", 1, 0, 250)
    assert checked.command(Confirm.READ) == ("WAIT", 1, 250)
    assert Waits(Durability.NONE, ReadCheck.NONE, timeout_ms=250).command(Confirm.WRITE) is None
