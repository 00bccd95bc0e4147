"""Errors to gRPC statuses, by class: the servicers' one way of failing a call or a stream.

A ServiceError (common/errors.py) carries its own status. The storage layer's errors are looked up in
CLUSTER_ERRORS by the exception's class and its bases, most specific first (as starlette finds an
exception handler), so ClusterBusy is told apart from the StorageError it derives from. Anything else is
a bug: it is not caught here, and gRPC answers UNKNOWN (and logs the traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_status import rpc_status

from common.errors import ClusterBusy, DeadlineExceeded, ServiceError, StorageError, TooManyRequests, Unavailable

log = logging.getLogger(__name__)

CLUSTER_DOWN = "the cluster is unavailable; retry later"
# The storage layer's errors (common/errors.py), by class. OSError covers socket errors from below.
CLUSTER_ERRORS: dict[type[BaseException], tuple[type[ServiceError], str]] = {
    ClusterBusy: (TooManyRequests, "too many requests in flight; retry later"),
    StorageError: (Unavailable, CLUSTER_DOWN),
    OSError: (Unavailable, CLUSTER_DOWN),
}
# Calls that come without a deadline still get one, so retries inside can't go on for ever.
MAX_CALL_S = 10.0

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def as_service_error(error: BaseException) -> ServiceError | None:
    """The ServiceError a caller is told for `error`, or None when it is not one we expect (a bug)."""
    if isinstance(error, ServiceError):
        return error
    for kind in type(error).__mro__:
        if kind in CLUSTER_ERRORS:
            service_error, message = CLUSTER_ERRORS[kind]
            return service_error(message)
    return None


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: ServiceError,
    trailing_metadata: tuple[tuple[str, str], ...] = (),
) -> NoReturn:
    """End the call with the error's status, its google.rpc details in the trailers."""
    status = rpc_status.to_status(error.status())
    await context.abort(status.code, status.details, trailing_metadata=(*status.trailing_metadata, *trailing_metadata))
    raise AssertionError("context.abort returned")  # it always raises; this tells the type checker so


def translate_errors(method: Handler) -> Handler:
    """A unary method's errors as gRPC statuses, within a deadline; nothing expected escapes as UNKNOWN."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        remaining = context.time_remaining()
        deadline = asyncio.timeout(min(remaining, MAX_CALL_S) if remaining is not None else MAX_CALL_S)
        try:
            async with deadline:
                return await method(self, request, context)
        except Exception as error:
            if isinstance(error, TimeoutError) and deadline.expired():
                failure: ServiceError | None = DeadlineExceeded("deadline exceeded before the cluster answered")
            else:
                failure = as_service_error(error)
            if failure is None:
                raise
            if not isinstance(error, ServiceError):
                log.warning("%s: %s: %r", method.__name__, failure.message, error)
            await abort(context, failure)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature callers see


@dataclass
class StreamProgress:
    """How far a stream got: what its end reports, and the token a client resumes from."""

    method: str
    resume_token: str = ""
    sent: int = 0  # messages with something in them (heartbeats aside)


@contextlib.asynccontextmanager
async def stream_errors(
    context: grpc.aio.ServicerContext[Any, Any], method: str, resume_token: str = ""
) -> AsyncIterator[StreamProgress]:
    """A streaming method's errors as gRPC statuses; one that can be resumed from says where, in the
    message and in the `resume-token` trailer (and its ErrorInfo)."""
    progress = StreamProgress(method, resume_token)
    try:
        yield progress
    except asyncio.CancelledError:
        log.info("%s ended after %d messages: cancelled by the client", method, progress.sent)
        raise
    except Exception as error:
        failure = as_service_error(error)
        if failure is None:
            raise
        if not isinstance(error, ServiceError):
            log.warning("%s: %s: %r", method, failure.message, error)
        log.info("%s ended after %d messages: %s", method, progress.sent, failure.message)
        token = progress.resume_token
        if failure.resumable and token:
            failure.message = f"{failure.message}; resume with resume_token {token}"
            failure.metadata["resume_token"] = token
            await abort(context, failure, trailing_metadata=(("resume-token", token),))
        await abort(context, failure)
