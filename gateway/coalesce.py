"""Natural batching of GET /profile/{user}: concurrent reads share one BatchGetProfiles call.

Each hop's fixed cost (two Python gRPC endpoints, the cluster client) is paid per call, not per item,
so reads that arrive together are sent together. Nothing waits for company: when no batch is in flight
the first read goes out at once; reads that arrive while one is in flight are gathered and go out as the
next batch when it returns (or as soon as MAX_BATCH are waiting). When idle this adds no latency: a read
alone goes out as a plain GetProfile, which costs less than a batch of one.

Each read still gets its own answer: the member's profile, or its own error as a google.rpc.Status
(NOT_FOUND, UNAVAILABLE, ...). A failure of the whole call (the service unreachable, a deadline) fails
every member of that batch with the call's status, as each GetProfile would have failed.

PROFILEMESH_GATEWAY_BATCH=off turns it off (each read is its own GetProfile), for A/B measurements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from google.rpc import status_pb2

from profilemesh.profile.v1 import profile_pb2

log = logging.getLogger(__name__)

# At most this many reads per call: bounds a batch's latency and size; well under the service's limit.
MAX_BATCH = 100


class MemberError(Exception):
    """One member's error, as the google.rpc.Status the batch carried for it."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.rpc_status = status
        self.code = next((code for code in grpc.StatusCode if code.value[0] == status.code), grpc.StatusCode.UNKNOWN)


Metadata = Sequence[tuple[str, str]]
Waiting = tuple[str, "asyncio.Future[profile_pb2.Profile]", Metadata]


class ReadCoalescer:
    """Sends the reads of one gateway as batches, one batch in flight at a time."""

    def __init__(
        self,
        batch_call: grpc.aio.UnaryUnaryMultiCallable[
            profile_pb2.BatchGetProfilesRequest, profile_pb2.BatchGetProfilesResponse
        ],
        single_call: grpc.aio.UnaryUnaryMultiCallable[profile_pb2.GetProfileRequest, profile_pb2.Profile],
        timeout_s: float,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._call = batch_call
        self._single_call = single_call
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        # (user, its future, its call metadata: the request id a read alone carries to profile_svc)
        self._waiting: list[Waiting] = []
        self._in_flight = 0  # batch calls under way; at most one unless the cap sent another early

    async def get(self, user: str, metadata: Metadata = ()) -> profile_pb2.Profile:
        """The user's profile; raises MemberError for this user's error, AioRpcError for the call's."""
        future: asyncio.Future[profile_pb2.Profile] = asyncio.get_running_loop().create_future()
        self._waiting.append((user, future, metadata))
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

    async def _run(self, batch: Sequence[Waiting]) -> None:
        if len(batch) == 1:  # alone (the idle case): a plain GetProfile, cheaper than a batch of one
            await self._run_one(*batch[0])
            return
        try:
            response = await self._call(
                profile_pb2.BatchGetProfilesRequest(users=[user for user, _, _ in batch]), timeout=self._timeout_s
            )
        except BaseException as error:  # the whole call failed: every member fails with its status
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        if len(response.results) != len(batch):  # never from a correct server; don't hand out misplaced results
            failure = grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "batch answer of the wrong size"
            )
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        for (_, future, _), result in zip(batch, response.results, strict=True):
            if future.done():  # its caller went away
                continue
            if result.WhichOneof("result") == "profile":
                future.set_result(result.profile)
            else:
                future.set_exception(MemberError(result.error))

    async def _run_one(self, user: str, future: asyncio.Future[profile_pb2.Profile], metadata: Metadata) -> None:
        try:
            profile = await self._single_call(
                profile_pb2.GetProfileRequest(user=user), timeout=self._timeout_s, metadata=metadata
            )
        except BaseException as error:
            if not future.done():
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        if not future.done():
            future.set_result(profile)
