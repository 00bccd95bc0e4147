"""Clients that record every operation: direct gRPC to one profile_svc replica, or REST through the gateway.

What a call's answer proves decides its result. A write answered UNAVAILABLE is `fail` only when its
reason says nothing ran (NO_REPLICA, PARTITION_UNAVAILABLE: refused before the script was sent) or
RESOURCE_EXHAUSTED (refused at the door); any other UNAVAILABLE, a deadline, or a connection lost after
sending is `unknown`. A connection that could not be made is `fail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from tests.jepsen.history import Op

# Reasons that prove the operation was refused before anything ran (common/errors.py, common/storage/durable.py).
NOT_RUN_REASONS = frozenset({"NO_REPLICA", "PARTITION_UNAVAILABLE", "TOO_MANY_REQUESTS", "INVALID_ARGUMENT"})
CALL_TIMEOUT_S = 3.0
Function = str  # create, update, delete, read
Via = str  # grpc, rest
FUNCTIONS: tuple[Function, ...] = ("read", "update", "create", "delete")
WEIGHTS = (0.45, 0.25, 0.17, 0.13)


@dataclass
class Answer:
    result: str  # ok, fail, unknown
    outcome: str | None = None  # done, exists, not_found when ok
    value: dict[str, str] | None = None
    error: str | None = None  # what the client got instead of an answer, for a reader of the history
    unexpected: str = ""  # an answer no correct service gives (e.g. 500, INTERNAL): reported by the run


class Client:
    via: Via

    async def call(self, f: Function, key: str, value: dict[str, str] | None) -> Answer:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class GrpcClient(Client):
    via: Via = "grpc"

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = profile_pb2_grpc.ProfileServiceStub(self.channel)

    async def call(self, f: Function, key: str, value: dict[str, str] | None) -> Answer:
        try:
            if f == "read":
                reply = await self.stub.GetProfile(profile_pb2.GetProfileRequest(user=key), timeout=CALL_TIMEOUT_S)
                return Answer("ok", "done", dict(reply.fields))
            if f == "create":
                await self.stub.CreateProfile(
                    profile_pb2.CreateProfileRequest(user=key, fields=value), timeout=CALL_TIMEOUT_S
                )
            elif f == "update":
                await self.stub.UpdateProfile(
                    profile_pb2.UpdateProfileRequest(user=key, fields=value), timeout=CALL_TIMEOUT_S
                )
            else:
                await self.stub.DeleteProfile(profile_pb2.DeleteProfileRequest(user=key), timeout=CALL_TIMEOUT_S)
            return Answer("ok", "done")
        except grpc.aio.AioRpcError as error:
            return _grpc_answer(error)

    async def close(self) -> None:
        await self.channel.close()


def _grpc_answer(error: grpc.aio.AioRpcError) -> Answer:
    code = error.code()
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return Answer("ok", "exists")
    if code == grpc.StatusCode.NOT_FOUND:
        return Answer("ok", "not_found")
    reason = _grpc_reason(error)
    said = f"{code.name} {reason}".strip()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Answer("fail", error=said)
    if code == grpc.StatusCode.UNAVAILABLE:
        if reason in NOT_RUN_REASONS:
            return Answer("fail", error=said)
        if not reason and "failed to connect" in (error.details() or "").lower():
            return Answer("fail", error=f"{said} (no connection)")  # nothing was sent
        return Answer("unknown", error=said)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return Answer("unknown", error=said)
    return Answer("unknown", error=said, unexpected=f"grpc {code.name}: {error.details()}")


def _grpc_reason(error: grpc.aio.AioRpcError) -> str:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]  # an aio error has the same trailers
    except ValueError:
        return ""
    if status is None:
        return ""
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return str(info.reason)
    return ""


class RestClient(Client):
    via: Via = "rest"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))

    async def call(self, f: Function, key: str, value: dict[str, str] | None) -> Answer:
        method = {"read": "GET", "create": "POST", "update": "PATCH", "delete": "DELETE"}[f]
        try:
            async with self.session.request(method, f"{self.base_url}/profile/{key}", json=value) as response:
                body = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError:
            return Answer("fail", error="no connection")  # the connection was never made
        except (aiohttp.ClientError, TimeoutError) as error:
            return Answer("unknown", error=type(error).__name__)
        if 200 <= status < 300:
            return Answer("ok", "done", json.loads(body) if f == "read" else None)
        if status == 409 and f == "create":
            return Answer("ok", "exists")
        if status == 404 and f != "create":
            return Answer("ok", "not_found")
        said = f"http {status} {_rest_reason(body)}".strip()
        if status == 429:
            return Answer("fail", error=said)
        if status == 503:
            return Answer("fail" if _rest_reason(body) in NOT_RUN_REASONS else "unknown", error=said)
        if status == 504:
            return Answer("unknown", error=said)
        return Answer("unknown", error=said, unexpected=f"http {status}: {body[:200]!r}")

    async def close(self) -> None:
        await self.session.close()


def _rest_reason(body: bytes) -> str:
    try:
        details = json.loads(body).get("details", [])
    except (ValueError, AttributeError):
        return ""
    for detail in details:
        if isinstance(detail, dict) and detail.get("reason"):
            return str(detail["reason"])
    return ""


@dataclass
class Recorder:
    """Every completed operation, with times from one monotonic clock started with the run."""

    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    _next_value: int = 0
    _next_process: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def unique_value(self) -> dict[str, str]:
        self._next_value += 1
        return {"v": f"w{self._next_value}"}

    def new_process(self) -> int:
        self._next_process += 1
        return self._next_process - 1

    async def perform(self, process: int, client: Client, f: Function, key: str) -> Op:
        value = self.unique_value() if f in ("create", "update") else None
        invoked = self.now()
        answer = await client.call(f, key, value)
        completed = self.now()
        if answer.unexpected:
            self.unexpected.append(f"{completed:.3f} s {client.via} {f} {key}: {answer.unexpected}")
        if f == "read":
            value = answer.value if answer.outcome == "done" else None
        op = Op(
            process=process,
            key=key,
            f=f,
            value=value,
            invoke_s=invoked,
            complete_s=completed,
            result=answer.result,
            via=client.via,
            outcome=answer.outcome if answer.result == "ok" else None,
            error=answer.error,
        )
        self.ops.append(op)
        return op


async def worker(
    recorder: Recorder,
    client: Client,
    keys: list[str],
    rng: random.Random,
    stop: asyncio.Event,
    pause_s: Callable[[], float],
) -> None:
    """One logical client: random operations on random keys until `stop`. After an unknown outcome it goes
    on as a new process (as Jepsen does): the old one may still be "in" that operation."""
    process = recorder.new_process()
    while not stop.is_set():
        f = rng.choices(FUNCTIONS, WEIGHTS)[0]
        op = await recorder.perform(process, client, f, rng.choice(keys))
        if op.result == "unknown":
            process = recorder.new_process()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause_s())


async def final_reads(recorder: Recorder, clients: list[Client], keys: list[str]) -> None:
    """Once healed and quiet: every client reads every key, so a lost write shows in the history."""
    for client in clients:
        process = recorder.new_process()
        for key in keys:
            await recorder.perform(process, client, "read", key)


def summary_counts(ops: list[Op]) -> dict[str, Any]:
    counts: dict[str, Any] = {"ops": len(ops)}
    for result in ("ok", "fail", "unknown"):
        counts[result] = sum(op.result == result for op in ops)
    counts["by_function"] = {f: sum(op.f == f for op in ops) for f in FUNCTIONS}
    counts["by_via"] = {via: sum(op.via == via for op in ops) for via in ("grpc", "rest")}
    return counts
