"""The gateway's middleware for seeing inside: request ids, metrics per route, a span per request.

A request id comes from the client's `X-Request-Id` or is made here; it goes back in the
response, to the services as gRPC metadata, and onto every log line about the request.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from common.rpc.interceptors import REQUEST_ID_HEADER
from common.runtime import metrics, tracing
from common.runtime.logs import REQUEST_ID

log = logging.getLogger(__name__)

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
UNMATCHED = "unmatched"  # the route label of requests no route matched (404, 405): never the raw path

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_requests = metrics.children(metrics.HTTP_REQUESTS)
_latency = metrics.children(metrics.HTTP_LATENCY)
_in_flight = 0
metrics.HTTP_IN_FLIGHT.set_function(lambda: _in_flight)  # read at scrape time: nothing to do per request


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def outgoing_metadata() -> list[tuple[str, str]]:
    """gRPC metadata for a call made on behalf of the current request: its id and trace context."""
    metadata = [(REQUEST_ID_HEADER, REQUEST_ID.get() or "")]
    tracing.inject(metadata)
    return metadata


async def _bad_request_id() -> web.StreamResponse:
    return web.json_response({"message": "X-Request-Id must be 1 to 128 letters, digits or ._:+/=-"}, status=400)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    global _in_flight
    given = request.headers.get("X-Request-Id")
    request_id = (
        given if given is not None and _VALID_REQUEST_ID.fullmatch(given) else f"{random.getrandbits(128):032x}"
    )
    REQUEST_ID.set(request_id)
    route = _route_of(request)
    method = request.method if request.method in _KNOWN_METHODS else "OTHER"
    started = time.perf_counter()
    _in_flight += 1
    try:
        if given is not None and given != request_id:
            answer: Awaitable[web.StreamResponse] = _bad_request_id()
        else:
            answer = handler(request)
        if not tracing.ENABLED:  # every request's path when tracing is off: not even a span's arguments
            response = await answer
        else:
            with tracing.server_span(
                f"{method} {route}",
                dict(request.headers),
                **{"http.request.method": method, "http.route": route, "profilemesh.request_id": request_id},
            ):
                response = await answer
    finally:
        _in_flight -= 1
    elapsed = time.perf_counter() - started
    _latency(route, method).observe(elapsed)
    _requests(route, method, str(response.status)).inc()
    response.headers["X-Request-Id"] = request_id
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s answered %d in %.1f ms", request.method, request.path, response.status, elapsed * 1000)
    return response
