"""Load shedding (common/rpc/interceptors.py SheddingInterceptor), without a server: the interceptor wraps a
handler as gRPC would ask it to, and the wrapped behaviour is called with a stand-in for the servicer context."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import REGISTRY

from common.rpc.interceptors import SheddingInterceptor

METHOD = "/profilemesh.test.v1.Test/Slow"
HEALTH = "/grpc.health.v1.Health/Check"


@dataclass
class Details:
    """What gRPC hands an interceptor: the method and the call's metadata."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


class Aborted(Exception):
    pass


class Context:
    """The part of grpc.aio.ServicerContext the shedding uses: abort, which raises as gRPC's does."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _shed_beyond_the_limit() -> dict[str, Any]:
    release = asyncio.Event()

    async def slow(request: Any, context: Any) -> str:
        await release.wait()
        return "done"

    interceptor = SheddingInterceptor(max_in_flight=2)

    async def wrapped(method: str) -> Any:
        async def continuation(details: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(slow)

        handler = await interceptor.intercept_service(continuation, Details(method))  # type: ignore[arg-type]
        assert handler is not None
        return handler.unary_unary

    async def call(method: str) -> tuple[Any, Context]:
        context = Context()
        try:
            return await (await wrapped(method))("request", context), context
        except Aborted:
            return None, context

    shed_before = sample("profilemesh_grpc_server_shed_total", method=METHOD)
    refused_before = sample("profilemesh_grpc_server_requests_total", method=METHOD, code="RESOURCE_EXHAUSTED")
    running = [asyncio.create_task(call(METHOD)) for _ in range(2)]
    await asyncio.sleep(0)  # both are in flight
    # The third is refused at once (a wait, so that a server that queues it fails here rather than hangs).
    _, refused = await asyncio.wait_for(call(METHOD), timeout=5)
    health_check = asyncio.create_task(call(HEALTH))  # health is never shed, busy or not
    await asyncio.sleep(0)
    release.set()
    answers = [answer for answer, _ in await asyncio.gather(*running, health_check)]
    after, _ = await call(METHOD)  # once the others ended, a call passes again
    return {
        "answers": answers,
        "refused": (refused.code, refused.details),
        "after": after,
        "shed": sample("profilemesh_grpc_server_shed_total", method=METHOD) - shed_before,
        "counted": sample("profilemesh_grpc_server_requests_total", method=METHOD, code="RESOURCE_EXHAUSTED")
        - refused_before,
        "busy": interceptor._busy,
    }


def test_calls_beyond_max_in_flight_are_refused_and_counted_health_never() -> None:
    seen = asyncio.run(_shed_beyond_the_limit())
    assert seen["answers"] == ["done", "done", "done"]
    assert seen["refused"] == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "server busy: 2 calls in flight; retry with backoff",
    )
    assert seen["after"] == "done"
    assert (seen["shed"], seen["counted"], seen["busy"]) == (1, 1, 0)


def test_streams_and_unknown_methods_pass_through() -> None:
    interceptor = SheddingInterceptor(max_in_flight=0)

    async def stream(request: Any, context: Any) -> Any:
        yield "message"

    async def intercept(handler: Any) -> Any:
        async def continuation(details: Any) -> Any:
            return handler

        return await interceptor.intercept_service(continuation, Details(METHOD))  # type: ignore[arg-type]

    streaming = grpc.unary_stream_rpc_method_handler(stream)
    assert asyncio.run(intercept(streaming)) is streaming
    assert asyncio.run(intercept(None)) is None
