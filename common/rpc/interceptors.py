"""The gRPC server interceptor every service runs: load shedding, metrics, request ids, trace context.

It wraps each unary method's handler once (cached by method), so a call pays for a few counter
updates and a context variable, plus a span only when tracing is on.
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


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary call, by method and status code; carries its request id and trace context.

    It also sheds load: beyond `max_in_flight` unary calls at once, a new call is answered
    RESOURCE_EXHAUSTED at once, and counted. Shedding here rather than only in gRPC core (which
    refuses before any Python runs) is what lets the server count what it refused.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._busy = 0  # unary calls in flight, every method but health checks
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method: (original, wrapped)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods and streams (health Watch, reflection) pass through
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[details.method] = (handler, self._wrap(details.method, handler))
        return cached[1]

    def _wrap(self, method: str, handler: Handler) -> Handler:
        # A coroutine function under grpc.aio, which the stubs type as a plain (synchronous) callable.
        behavior: Any = handler.unary_unary
        latency = metrics.GRPC_LATENCY.labels(method)
        shed = metrics.GRPC_SHED.labels(method)
        in_flight = [0]
        metrics.GRPC_IN_FLIGHT.labels(method).set_function(lambda: in_flight[0])  # read at scrape time
        counters: dict[Any, Any] = {}
        is_health = method.startswith(_HEALTH)
        traced = tracing.ENABLED and not is_health  # a span per health check would bury the requests

        def count(code: Any) -> None:
            counter = counters.get(code)
            if counter is None:
                name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
                counter = counters[code] = metrics.GRPC_REQUESTS.labels(method, name)
            counter.inc()

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if self._busy >= self.max_in_flight and not is_health:  # health answers even when busy
                shed.inc()
                count(grpc.StatusCode.RESOURCE_EXHAUSTED)
                await abort(
                    context, TooManyRequests(f"server busy: {self.max_in_flight} calls in flight; retry with backoff")
                )
            metadata = context.invocation_metadata() or ()
            request_id = next((value for key, value in metadata if key == REQUEST_ID_HEADER), None)
            REQUEST_ID.set(request_id if isinstance(request_id, str) else None)
            in_flight[0] += 1
            if not is_health:
                self._busy += 1
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
                in_flight[0] -= 1
                if not is_health:
                    self._busy -= 1
                latency.observe(time.perf_counter() - started)
                code = context.code()
                count(code)
                if not is_health and log.isEnabledFor(logging.DEBUG):  # health checks: not worth a line each
                    log.debug(
                        "%s answered %s in %.1f ms",
                        method,
                        getattr(code, "name", "OK"),
                        (time.perf_counter() - started) * 1000,
                    )

        return grpc.unary_unary_rpc_method_handler(
            observed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
