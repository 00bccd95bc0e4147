"""The gRPC server interceptors every service runs: load shedding, then metrics, request ids and trace context.

Each wraps a unary method's handler once (cached by method), so a call pays for a few counter updates and a
context variable, plus a span only when tracing is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from common.errors import TooManyRequests
from common.rpc.status import abort
from common.runtime import metrics, tracing
from common.runtime.logs import REQUEST_ID

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_HEALTH = "/grpc.health.v1.Health/"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once (`_wrap`, cached by method and the handler it was given), so the
    interceptors before it, which cache by handler too, wrap each method once; unknown methods pass, and so do
    the ones `_wraps` declines."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method: (original, wrapped)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or not self._wraps(handler):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return cached[1]

    def _wraps(self, handler: Handler) -> bool:
        return True

    def _wrap(self, method: str, handler: Handler) -> Handler:
        raise NotImplementedError


class _UnaryInterceptor(WrappingInterceptor):
    """Wraps unary methods only: streams (health Watch, reflection, the Watch RPCs) pass through."""

    def _wraps(self, handler: Handler) -> bool:
        return handler.unary_unary is not None


class SheddingInterceptor(_UnaryInterceptor):
    """Beyond `max_in_flight` unary calls at once, a new call is answered RESOURCE_EXHAUSTED at once, and counted
    (profilemesh_grpc_server_shed_total, and as a request answered so). Health checks are neither shed nor counted
    in flight: a busy server still says it serves.

    Shedding here rather than only in gRPC core (which refuses before any Python runs) is what lets the server
    count what it refused. It goes before ObservingInterceptor, so a refused call is neither timed nor traced.
    """

    def __init__(self, max_in_flight: int) -> None:
        super().__init__()
        self.max_in_flight = max_in_flight
        self._busy = 0  # unary calls in flight, every method but health checks

    def _wrap(self, method: str, handler: Handler) -> Handler:
        shed = metrics.GRPC_SHED.labels(method)  # the series exists, at 0, for every method called
        if method.startswith(_HEALTH):
            return handler  # health answers even when busy
        # A coroutine function under grpc.aio, which the stubs type as a plain (synchronous) callable.
        behavior: Any = handler.unary_unary

        async def shedding(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self._busy >= self.max_in_flight:
                shed.inc()
                metrics.GRPC_REQUESTS.labels(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
                await abort(
                    context, TooManyRequests(f"server busy: {self.max_in_flight} calls in flight; retry with backoff")
                )
            self._busy += 1
            try:
                return await behavior(request, context)
            finally:
                self._busy -= 1

        return grpc.unary_unary_rpc_method_handler(
            shedding, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


class _MethodMetrics:
    """One method's metric children, looked up once: latency, calls in flight, and requests by status code."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.latency = metrics.GRPC_LATENCY.labels(method)
        self.in_flight = 0
        metrics.GRPC_IN_FLIGHT.labels(method).set_function(lambda: self.in_flight)  # read at scrape time
        self._requests: dict[Any, Any] = {}
        self.logged = not method.startswith(_HEALTH)  # health checks: not worth a debug line each

    def answered(self, code: Any, started: float) -> None:
        """Record a call that began at `started` (perf_counter) and ended with `code` (None or 0: OK)."""
        self.latency.observe(time.perf_counter() - started)
        counter = self._requests.get(code)
        if counter is None:
            name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
            counter = self._requests[code] = metrics.GRPC_REQUESTS.labels(self.method, name)
        counter.inc()
        if self.logged and log.isEnabledFor(logging.DEBUG):
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.debug("%s answered %s in %.1f ms", self.method, getattr(code, "name", "OK"), elapsed_ms)


class ObservingInterceptor(_UnaryInterceptor):
    """Counts and times every unary call, by method and status code; carries its request id and trace context."""

    def _wrap(self, method: str, handler: Handler) -> Handler:
        behavior: Any = handler.unary_unary  # a coroutine function, as in SheddingInterceptor
        seen = _MethodMetrics(method)
        traced = tracing.ENABLED and not method.startswith(_HEALTH)  # a span per health check would bury the rest

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            metadata = context.invocation_metadata() or ()
            request_id = next((value for key, value in metadata if key == REQUEST_ID_HEADER), None)
            REQUEST_ID.set(request_id if isinstance(request_id, str) else None)
            seen.in_flight += 1
            started = time.perf_counter()
            try:
                if not traced:
                    return await behavior(request, context)
                with tracing.server_span(
                    method,
                    # Binary (-bin) metadata aside, values are text.
                    {key: value for key, value in metadata if isinstance(value, str)},
                    **{"rpc.system": "grpc", "rpc.method": method, "profilemesh.request_id": str(request_id or "")},
                ):
                    return await behavior(request, context)
            finally:
                seen.in_flight -= 1
                seen.answered(context.code(), started)

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
