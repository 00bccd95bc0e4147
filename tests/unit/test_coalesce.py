"""gateway.coalesce.ReadCoalescer on a real event loop, with plain async functions in place of the two RPCs.

What the gateway's REST reads rely on: a read alone goes out at once, as a plain GetProfile; reads that arrive
while a call is in flight share the next batch, at most max_batch to a call; each caller gets its own answer or
its own error, a failed call fails exactly its members, and a caller that goes away breaks no one else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2

from gateway.coalesce import MemberError, ReadCoalescer, WriteCoalescer
from profilemesh.profile.v1 import profile_pb2

TIMEOUT_S = 2.5


def _profile(user: str) -> profile_pb2.Profile:
    return profile_pb2.Profile(user=user, fields={"of": user})


def _rpc_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), message)


class FakeProfiles:
    """profile_svc's two read calls, recorded, each held until the test opens its gate.

    Users named `missing-*` have no profile (NOT_FOUND as that member's error); `fail` sets an exception
    the next calls raise as a whole; `wrong_size` makes a batch answer one result short."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.singles: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        self.timeouts: list[float | None] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None
        self.wrong_size = False

    # `timeout` is the gRPC call's keyword, which the coalescer passes; the fake records it.
    async def batch(
        self,
        request: profile_pb2.BatchGetProfilesRequest,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> profile_pb2.BatchGetProfilesResponse:
        self.batches.append(list(request.users))
        self.timeouts.append(timeout)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        results = [self._result(user) for user in request.users]
        if self.wrong_size:
            results = results[:-1]
        return profile_pb2.BatchGetProfilesResponse(results=results)

    async def single(
        self,
        request: profile_pb2.GetProfileRequest,
        timeout: float | None = None,  # noqa: ASYNC109
        metadata: Any = (),
    ) -> profile_pb2.Profile:
        self.singles.append((request.user, tuple(metadata)))
        self.timeouts.append(timeout)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        if request.user.startswith("missing-"):
            raise _rpc_error(grpc.StatusCode.NOT_FOUND, f"no profile {request.user}")
        return _profile(request.user)

    @staticmethod
    def _result(user: str) -> profile_pb2.BatchGetProfileResult:
        if user.startswith("missing-"):
            status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message=f"no profile {user}")
            return profile_pb2.BatchGetProfileResult(error=status)
        return profile_pb2.BatchGetProfileResult(profile=_profile(user))

    @property
    def calls(self) -> int:
        return len(self.batches) + len(self.singles)


def _run(scenario: Callable[[FakeProfiles], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(FakeProfiles()), 5)  # a hang fails the test rather than the run

    asyncio.run(main())


def _coalescer(fake: FakeProfiles, max_batch: int = 100) -> ReadCoalescer:
    return ReadCoalescer(fake.batch, fake.single, TIMEOUT_S, max_batch=max_batch)  # type: ignore[arg-type]


async def _settle() -> None:
    """Let every task that can run, run (no timer is involved: each step is a plain loop turn)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def _start(coalescer: ReadCoalescer, users: Sequence[str]) -> list[asyncio.Task[profile_pb2.Profile]]:
    tasks = []
    for user in users:
        tasks.append(asyncio.create_task(coalescer.get(user)))
        await asyncio.sleep(0)  # each get runs up to its await, in this order
    return tasks


async def _outcomes(tasks: Sequence[Awaitable[profile_pb2.Profile]]) -> list[Any]:
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_a_read_alone_goes_out_at_once_as_a_plain_get() -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        coalescer = _coalescer(fake)
        task = asyncio.create_task(coalescer.get("alice", metadata=[("x-request-id", "r1")]))
        await _settle()
        # Sent while nothing else is around, and without waiting for company (no timer has run).
        assert fake.singles == [("alice", (("x-request-id", "r1"),))]
        assert fake.batches == []
        assert fake.timeouts == [TIMEOUT_S]
        fake.gate.set()
        assert await task == _profile("alice")
        # Idle again: the next read also goes alone.
        assert await coalescer.get("bob") == _profile("bob")
        assert [user for user, _ in fake.singles] == ["alice", "bob"]
        assert fake.batches == []

    _run(scenario)


def test_reads_arriving_during_a_call_share_the_next_batch_in_order() -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        coalescer = _coalescer(fake)
        first = await _start(coalescer, ["u0"])
        later = await _start(coalescer, [f"u{i}" for i in range(1, 6)])
        await _settle()
        assert fake.calls == 1, "the reads that came while a call was in flight waited for it"
        fake.gate.set()
        answers = await _outcomes(first + later)
        assert answers == [_profile(f"u{i}") for i in range(6)]
        assert [user for user, _ in fake.singles] == ["u0"]
        assert fake.batches == [[f"u{i}" for i in range(1, 6)]]

    _run(scenario)


def test_a_batch_holds_at_most_max_batch_reads() -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        coalescer = _coalescer(fake, max_batch=3)
        users = [f"u{i}" for i in range(11)]
        tasks = await _start(coalescer, users)
        await _settle()
        # u0 alone; then each third waiting read sends a full batch without waiting for the call in flight.
        assert fake.batches == [["u1", "u2", "u3"], ["u4", "u5", "u6"], ["u7", "u8", "u9"]]
        fake.gate.set()
        assert await _outcomes(tasks) == [_profile(user) for user in users]
        sent = [[user for user, _ in fake.singles]] + fake.batches
        assert all(len(batch) <= 3 for batch in sent)
        assert sorted(user for batch in sent for user in batch) == sorted(users), "each read sent exactly once"

    _run(scenario)


def test_a_members_own_error_reaches_only_its_caller() -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        coalescer = _coalescer(fake)
        tasks = await _start(coalescer, ["lead", "a", "missing-b", "c"])
        fake.gate.set()
        lead, a, b, c = await _outcomes(tasks)
        assert fake.batches == [["a", "missing-b", "c"]]
        assert (lead, a, c) == (_profile("lead"), _profile("a"), _profile("c"))
        assert isinstance(b, MemberError)
        assert b.code == grpc.StatusCode.NOT_FOUND
        assert b.rpc_status.message == "no profile missing-b"

    _run(scenario)


def test_a_member_error_of_an_unknown_code_is_unknown() -> None:
    error = MemberError(status_pb2.Status(code=999, message="from a newer server"))
    assert error.code == grpc.StatusCode.UNKNOWN
    assert str(error) == "from a newer server"


@pytest.mark.parametrize(
    "failure",
    [
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "profile_svc unreachable"),
        _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "late"),
    ],
    ids=["unavailable", "deadline"],
)
def test_a_failed_batch_fails_each_member_with_the_calls_error(failure: grpc.aio.AioRpcError) -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        coalescer = _coalescer(fake)
        lead = await _start(coalescer, ["lead"])
        members = await _start(coalescer, ["a", "b", "c"])
        await _settle()
        fake.fail = failure  # the lead's GetProfile and the batch of the three both fail
        fake.gate.set()
        outcomes = await _outcomes(lead + members)
        assert all(outcome is failure for outcome in outcomes)
        # The coalescer is idle again, not wedged: the next reads are served.
        fake.fail = None
        assert await _outcomes(await _start(coalescer, ["d", "e"])) == [_profile("d"), _profile("e")]

    _run(scenario)


def test_a_batch_answer_of_the_wrong_size_fails_its_members_rather_than_misplacing_results() -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        fake.wrong_size = True
        coalescer = _coalescer(fake)
        tasks = await _start(coalescer, ["lead", "a", "b"])
        fake.gate.set()
        lead, a, b = await _outcomes(tasks)
        assert lead == _profile("lead")
        for member in (a, b):
            assert isinstance(member, grpc.aio.AioRpcError)
            assert member.code() == grpc.StatusCode.INTERNAL

    _run(scenario)


def test_a_caller_that_goes_away_breaks_no_other_member() -> None:
    async def scenario(fake: FakeProfiles) -> None:
        fake.gate.clear()
        coalescer = _coalescer(fake)
        tasks = await _start(coalescer, ["lead", "a", "b", "c"])
        await _settle()
        tasks[0].cancel()  # the lone GetProfile's caller
        tasks[2].cancel()  # a member of the batch that is waiting its turn
        await _settle()
        fake.gate.set()
        lead, a, b, c = await _outcomes(tasks)
        assert isinstance(lead, asyncio.CancelledError) and isinstance(b, asyncio.CancelledError)
        assert (a, c) == (_profile("a"), _profile("c"))
        assert await coalescer.get("g") == _profile("g")
        # A member of a batch in flight (the cap sent it early): the other member still gets its answer.
        fake.gate.clear()
        capped = _coalescer(fake, max_batch=2)
        tasks = await _start(capped, ["d", "e", "f"])
        await _settle()
        assert fake.batches[-1] == ["e", "f"]
        tasks[1].cancel()
        await _settle()
        fake.gate.set()
        d, e, f = await _outcomes(tasks)
        assert isinstance(e, asyncio.CancelledError)
        assert (d, f) == (_profile("d"), _profile("f"))
        assert await capped.get("h") == _profile("h")

    _run(scenario)


class FakeWrites:
    """profile_svc's change calls, recorded: CreateProfile alone and BatchWriteProfiles, each held until the
    test opens its gate. Creating a user named `taken-*` answers ALREADY_EXISTS (that member's error)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.singles: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def create(
        self,
        request: profile_pb2.CreateProfileRequest,
        timeout: float | None = None,  # noqa: ASYNC109
        metadata: Any = (),
    ) -> profile_pb2.CreateProfileResponse:
        self.singles.append(request.user)
        await self.gate.wait()
        if request.user.startswith("taken-"):
            raise _rpc_error(grpc.StatusCode.ALREADY_EXISTS, "Profile exists")
        return profile_pb2.CreateProfileResponse(message=f"Profile created for: {request.user}")

    async def batch(
        self,
        request: profile_pb2.BatchWriteProfilesRequest,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> profile_pb2.BatchWriteProfilesResponse:
        users = [member.create.user for member in request.requests]
        self.batches.append(users)
        await self.gate.wait()
        results = []
        for user in users:
            if user.startswith("taken-"):
                status = status_pb2.Status(code=grpc.StatusCode.ALREADY_EXISTS.value[0], message="Profile exists")
                results.append(profile_pb2.ProfileWriteResult(error=status))
            else:
                created = profile_pb2.CreateProfileResponse(message=f"Profile created for: {user}")
                results.append(profile_pb2.ProfileWriteResult(created=created))
        return profile_pb2.BatchWriteProfilesResponse(results=results)


def _create(user: str) -> profile_pb2.ProfileWriteRequest:
    return profile_pb2.ProfileWriteRequest(create=profile_pb2.CreateProfileRequest(user=user, fields={"a": "b"}))


def test_changes_alone_go_as_their_own_call_and_together_as_one_batch_each_with_its_own_answer() -> None:
    async def scenario() -> None:
        fake = FakeWrites()
        writes = WriteCoalescer({"create": fake.create}, fake.batch, TIMEOUT_S)  # type: ignore[arg-type, dict-item]
        fake.gate.clear()
        first = asyncio.create_task(writes.ask(_create("alone")))
        await _settle()
        assert fake.singles == ["alone"] and fake.batches == []  # at once, as CreateProfile
        later = [asyncio.create_task(writes.ask(_create(user))) for user in ("u1", "taken-1", "u2")]
        await _settle()
        assert fake.batches == []  # waiting for the call in flight
        fake.gate.set()
        assert (await first).message == "Profile created for: alone"
        answers = await asyncio.gather(*later, return_exceptions=True)
        assert fake.batches == [["u1", "taken-1", "u2"]]
        assert answers[0].message == "Profile created for: u1"
        assert isinstance(answers[1], MemberError) and answers[1].code == grpc.StatusCode.ALREADY_EXISTS
        assert answers[2].message == "Profile created for: u2"

    asyncio.run(asyncio.wait_for(scenario(), 5))
