"""Which failures are retried, and how long to wait: one table for every method, sync or async, and the feed.

A read changes nothing a caller cares about, so any UNAVAILABLE or shed call is tried again (a GetProfile
whose first attempt ran before its connection broke counts one more read in the statistics: the price of
a read that doesn't fail). A change is tried again only where the server says it did not run: the reasons
in NOTHING_RAN (README "Durability and failures": the service itself retries only what the cluster proves
did not run, and reports everything else as OUTCOME_UNKNOWN), or a connection that was never made. Every
other failure of a change, a lost connection mid-call or a deadline included, is an OutcomeUnknown.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

import grpc

from profilemesh.client.errors import (
    DeadlineExceeded,
    FeedRestartRequired,
    InvalidArgument,
    OutcomeUnknown,
    ProfilemeshError,
    TooManyRequests,
    Unavailable,
)


class Kind(enum.Enum):
    READ = "read"
    CHANGE = "change"


# Reasons with which the server says a change did not run (retrying it can't apply it twice).
NOTHING_RAN = frozenset({"NO_REPLICA", "PARTITION_UNAVAILABLE", "CLUSTER_UNAVAILABLE", "TOO_MANY_REQUESTS"})
# gRPC's words for a call that never left this client: no connection could be made to any replica.
_NEVER_SENT = ("failed to connect to all addresses", "connections to all backends failing", "connection refused")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, within the call's deadline (`timeout_s` covers every attempt)."""

    timeout_s: float = 5.0
    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def backoff_s(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2**attempt))


def never_sent(error: ProfilemeshError) -> bool:
    """No replica could be reached, so nothing was sent (gRPC's transparent retries cover a call that was
    sent on a connection that then failed before the replica saw it)."""
    return (
        error.code == grpc.StatusCode.UNAVAILABLE and not error.reason and error.message.lower().startswith(_NEVER_SENT)
    )


def retryable(kind: Kind, error: ProfilemeshError) -> bool:
    """Whether another attempt is safe and may succeed."""
    if kind is Kind.READ:
        return isinstance(error, (Unavailable, TooManyRequests)) or (
            isinstance(error, DeadlineExceeded) and bool(error.reason)  # the server's deadline, not ours
        )
    return error.reason in NOTHING_RAN or never_sent(error)


def final(kind: Kind, error: ProfilemeshError) -> ProfilemeshError:
    """What the caller gets once no retry is left: a change that may have run is an OutcomeUnknown."""
    if kind is Kind.CHANGE and isinstance(error, (Unavailable, DeadlineExceeded)) and not retryable(kind, error):
        if isinstance(error, OutcomeUnknown):
            return error
        unknown = OutcomeUnknown(
            f"{error.message}: the change may or may not have happened; retrying is safe (a create then "
            "answers ProfileExists, a delete ProfileNotFound), or use ensure_created / ensure_deleted",
            code=error.code,
            reason=error.reason,
            metadata=error.metadata,
        )
        unknown.__cause__ = error
        return unknown
    return error


class FeedAction(enum.Enum):
    RECONNECT = "reconnect"
    RAISE = "raise"


def on_feed_error(error: ProfilemeshError) -> FeedAction:
    """A watch goes on (with its latest token) after UNAVAILABLE of any kind (STREAM_ENDED on drain or
    lifetime, a replica gone) and after RESOURCE_EXHAUSTED (too many streams); OUT_OF_RANGE
    (FeedRestartRequired), a refused token and every other error end it with the typed error."""
    if isinstance(error, FeedRestartRequired | InvalidArgument):
        return FeedAction.RAISE
    if isinstance(error, Unavailable | TooManyRequests | DeadlineExceeded):
        return FeedAction.RECONNECT
    return FeedAction.RAISE


@dataclass(frozen=True, slots=True)
class FeedPolicy:
    """How a watch reconnects: at once with jitter after the server ended the stream, then exponentially
    slower, and it gives up (raising the last error) after `max_outage_s` with no message received."""

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    max_outage_s: float = 60.0

    def backoff_s(self, failures: int) -> float:
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2**failures)
        return random.uniform(ceiling / 2, ceiling)
