"""Natural batching across the hop to profile_svc: concurrent reads share one BatchGetProfiles call, and
concurrent changes (POST, PATCH, DELETE) one BatchWriteProfiles call.

Each hop's fixed cost (two Python gRPC endpoints, the cluster client) is paid per call, not per item,
so requests that arrive together are sent together. Nothing waits for company: when no batch is in flight
the first request goes out at once; those that arrive while one is in flight are gathered and go out as
the next batch when it returns (or as soon as MAX_BATCH are waiting). When idle this adds no latency: a
request alone goes out as its own call (GetProfile, CreateProfile, ...), which costs less than a batch of one.

Each request still gets its own answer: the member's result, or its own error as a google.rpc.Status
(NOT_FOUND, ALREADY_EXISTS, UNAVAILABLE, ...). A failure of the whole call (the service unreachable, a
deadline) fails every member of that batch with the call's status, as each call would have failed.

PROFILEMESH_GATEWAY_BATCH=off turns it off (each request is its own call), for A/B measurements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from profilemesh.profile.v1 import profile_pb2

log = logging.getLogger(__name__)

# At most this many requests per call: bounds a batch's latency and size; well under the service's limit.
MAX_BATCH = 100

Member = TypeVar("Member")  # what a request asks (a user name, a change)
Answer = TypeVar("Answer")  # what it gets (a profile, a change's response)
Metadata = Sequence[tuple[str, str]]


class MemberError(Exception):
    """One member's error, as the google.rpc.Status the batch carried for it."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.rpc_status = status
        self.code = next((code for code in grpc.StatusCode if code.value[0] == status.code), grpc.StatusCode.UNKNOWN)


class Coalescer(Generic[Member, Answer]):
    """Sends the requests of one gateway as batches, one batch in flight at a time.

    A subclass says how a batch is asked (`ask_batch`: the members' answers or MemberErrors, in order) and how
    a member alone is asked (`ask_one`, with the request's own metadata, e.g. its request id).
    """

    def __init__(self, timeout_s: float, max_batch: int = MAX_BATCH) -> None:
        self.timeout_s = timeout_s
        self._max_batch = max_batch
        self._waiting: list[tuple[Member, asyncio.Future[Answer], Metadata]] = []
        self._in_flight = 0  # batch calls under way; at most one unless the cap sent another early

    async def ask_batch(self, members: list[Member]) -> Sequence[Answer | MemberError]:
        raise NotImplementedError

    async def ask_one(self, member: Member, metadata: Metadata) -> Answer:
        raise NotImplementedError

    async def ask(self, member: Member, metadata: Metadata = ()) -> Answer:
        """The member's answer; raises MemberError for its own error, AioRpcError for the call's."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((member, future, metadata))
        if not self._in_flight or len(self._waiting) >= self._max_batch:
            self._send()
        return await future

    def _send(self) -> None:
        batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
        self._in_flight += 1
        task = asyncio.ensure_future(self._run(batch))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._in_flight -= 1
        if self._waiting and not self._in_flight:
            self._send()

    async def _run(self, batch: list[tuple[Member, asyncio.Future[Answer], Metadata]]) -> None:
        futures = [future for _, future, _ in batch]
        if len(batch) == 1:  # alone (the idle case): its own call, cheaper than a batch of one
            member, future, metadata = batch[0]
            await _settle(futures, lambda: self._one(member, metadata))
        else:
            await _settle(futures, lambda: self._many([member for member, _, _ in batch]))

    async def _one(self, member: Member, metadata: Metadata) -> list[Answer | MemberError]:
        return [await self.ask_one(member, metadata)]

    async def _many(self, members: list[Member]) -> Sequence[Answer | MemberError]:
        answers = await self.ask_batch(members)
        if len(answers) != len(members):  # never from a correct server; don't hand out misplaced results
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "batch answer of the wrong size"
            )
        return answers


async def _settle(futures: list[asyncio.Future[Any]], call: Callable[[], Awaitable[Sequence[Any]]]) -> None:
    """Each future gets its answer, its MemberError, or the whole call's failure; one whose caller went away
    is left alone."""
    try:
        answers = await call()
    except BaseException as error:
        for future in futures:
            if not future.done():
                future.set_exception(error)
        if not isinstance(error, Exception):
            raise
        return
    for future, answer in zip(futures, answers, strict=True):
        if future.done():
            continue
        if isinstance(answer, MemberError):
            future.set_exception(answer)
        else:
            future.set_result(answer)


class ReadCoalescer(Coalescer[str, profile_pb2.Profile]):
    """GET /profile/{user}: GetProfile alone, BatchGetProfiles together."""

    def __init__(
        self,
        batch_call: grpc.aio.UnaryUnaryMultiCallable[
            profile_pb2.BatchGetProfilesRequest, profile_pb2.BatchGetProfilesResponse
        ],
        single_call: grpc.aio.UnaryUnaryMultiCallable[profile_pb2.GetProfileRequest, profile_pb2.Profile],
        timeout_s: float,
        max_batch: int = MAX_BATCH,
    ) -> None:
        super().__init__(timeout_s, max_batch)
        self._batch_call = batch_call
        self._single_call = single_call

    async def get(self, user: str, metadata: Metadata = ()) -> profile_pb2.Profile:
        """The user's profile; raises MemberError for this user's error, AioRpcError for the call's."""
        return await self.ask(user, metadata)

    async def ask_one(self, member: str, metadata: Metadata) -> profile_pb2.Profile:
        return await self._single_call(
            profile_pb2.GetProfileRequest(user=member), timeout=self.timeout_s, metadata=metadata
        )

    async def ask_batch(self, members: list[str]) -> list[profile_pb2.Profile | MemberError]:
        response = await self._batch_call(profile_pb2.BatchGetProfilesRequest(users=members), timeout=self.timeout_s)
        return [
            result.profile if result.WhichOneof("result") == "profile" else MemberError(result.error)
            for result in response.results
        ]


Write = profile_pb2.ProfileWriteRequest


class WriteCoalescer(Coalescer[Write, Message]):
    """POST, PATCH and DELETE /profile/{user}: CreateProfile, UpdateProfile or DeleteProfile alone,
    BatchWriteProfiles together (whose members bound for one primary then share one durability wait)."""

    def __init__(
        self,
        calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]],
        batch_call: grpc.aio.UnaryUnaryMultiCallable[
            profile_pb2.BatchWriteProfilesRequest, profile_pb2.BatchWriteProfilesResponse
        ],
        timeout_s: float,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """`calls`: the method of each kind of change (`create`, `update`, `delete`: the request's oneof)."""
        super().__init__(timeout_s, max_batch)
        self._calls = calls
        self._batch_call = batch_call

    async def ask_one(self, member: Write, metadata: Metadata) -> Message:
        kind = str(member.WhichOneof("operation"))
        response: Message = await self._calls[kind](getattr(member, kind), timeout=self.timeout_s, metadata=metadata)
        return response

    async def ask_batch(self, members: list[Write]) -> list[Message | MemberError]:
        response = await self._batch_call(
            profile_pb2.BatchWriteProfilesRequest(requests=members), timeout=self.timeout_s
        )
        answers: list[Message | MemberError] = []
        for result in response.results:
            kind = result.WhichOneof("result")
            answers.append(MemberError(result.error) if kind == "error" else getattr(result, str(kind)))
        return answers
