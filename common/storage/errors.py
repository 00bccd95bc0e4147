"""The cluster client's exceptions, told apart once: which prove a command did not run, and what each means
outside the storage layer (the storage-neutral errors of common/errors.py).

Everything that leaves common/storage goes through `translated` or `neutral`, so no other module needs to
know redis-py's exception classes, and the services' loops and the gRPC status table match ours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import (
    ClusterBusy,
    ClusterUnavailable,
    CommandFailed,
    GroupExists,
    NoGroup,
    NotPermitted,
    StorageError,
)
from common.storage.internals import closed_under_command

# Replies that prove the command was not executed, so running it again is safe: the slot is elsewhere
# (MOVED, ASK), the cluster is between states (TRYAGAIN, CLUSTERDOWN, MASTERDOWN), the node is loading or
# a replica now (LOADING, READONLY), or it does not know the script yet (NOSCRIPT).
NOT_EXECUTED: tuple[type[Exception], ...] = (
    MovedError,
    AskError,
    TryAgainError,
    ClusterDownError,
    MasterDownError,
    BusyLoadingError,
    ReadOnlyError,
    NoScriptError,
)
# The connection failed: whether the command ran is unknown, unless nothing was sent.
BROKEN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
# What the cluster client raises when the cluster fails under a command. RedisClusterException (e.g. no
# node reachable) is not a RedisError; TimeoutError is an OSError.
CLIENT_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
# Error replies we act on, by their error code (the reply's first word, which the protocol fixes).
_BY_CODE: dict[str, type[CommandFailed]] = {"NOGROUP": NoGroup, "BUSYGROUP": GroupExists, "NOPERM": NotPermitted}


def neutral(error: BaseException) -> StorageError | None:
    """The storage-neutral error `error` stands for, or None when it is none of the client's (a bug)."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, MaxConnectionsError):  # before ConnectionError, which it derives from
        return ClusterBusy("too many cluster commands in flight in this process")
    if isinstance(error, ResponseError) and not isinstance(error, NOT_EXECUTED):
        code = str(error).split(" ", 1)[0]
        return _BY_CODE.get(code, CommandFailed)(str(error), code=code)
    if isinstance(error, CLIENT_FAILURES):
        return ClusterUnavailable(f"{type(error).__name__}: {error}")
    return None


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Raise the client's exceptions under the block as storage-neutral ones (the original as their cause);
    a connection closed under a command counts as a failed connection (see internals.closed_under_command)."""
    try:
        with closed_under_command():
            yield
    except CLIENT_FAILURES as error:
        failure = neutral(error)
        if failure is None or failure is error:
            raise
        raise failure from error
