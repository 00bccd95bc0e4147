"""The public edge: what the gateway refuses before any handler runs, and what its 5xx bodies may say.

- Size limits of the request line (the URL), of each header and of the header count are aiohttp's HTTP
  parser's (`server_limits`, passed to the server); over them the parser answers 400 and closes.
- A request's headers must arrive within `http_idle_timeout_s` of the connection opening or of the previous
  response (aiohttp's keep-alive timer, which closes a connection that has no whole request by then), and
  its body within `http_body_timeout_s` (408): a client that trickles bytes can't hold a connection for ever.
- An optional token bucket per client address (429 with Retry-After); the address is `http_client`'s, which
  the SSE routes' per-client share of the stream slots uses too.
- A 5xx body never carries internal error text: it says what a client can do and gives the request id,
  under which the log holds the details.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from common.rpc.clients import Network, client_address
from common.runtime.config import Settings
from common.runtime.logs import REQUEST_ID

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNLIMITED_PATHS = frozenset(("/healthz", "/readyz"))  # probes are never rate limited
# What a client is told for a 5xx whose message can't be shown; the log has the rest under the request id.
PUBLIC_5XX = {
    500: "internal error",
    501: "not implemented",
    502: "bad gateway",
    503: "the service is unavailable; retry later",
    504: "the service did not answer in time; retry later",
}
# 503 and 504 (UNAVAILABLE, DEADLINE_EXCEEDED) keep the services' own sentences, written for clients
# ("partition ... has no replica"; common/rpc/server.py turns every failure below it into such a sentence). gRPC
# itself, in the gateway, answers the same codes with transport errors that name addresses: not shown. Any
# other 5xx (a service's UNKNOWN or INTERNAL, an exception in the gateway) may carry internals: never shown.
SHOWN_5XX = frozenset((503, 504))
_INTERNAL_TEXT = re.compile(r"ipv[46]:|unix:|dns:|\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]|last error|errno|traceback", re.I)
MAX_RATE_CLIENTS = 10_000  # buckets kept before full (idle) ones are dropped


def server_limits(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiohttp's server (web.run_app / AppRunner): the parser's limits and timer."""
    return {
        "max_line_size": settings.http_max_url_bytes,
        "max_field_size": settings.http_max_header_bytes,
        "max_headers": settings.http_max_headers,
        "keepalive_timeout": settings.http_idle_timeout_s,
        # After answering a request whose body was not read (413, 408), aiohttp reads and drops what still
        # comes, so the client sees the answer rather than a reset: no longer than a body may take anyway.
        "lingering_time": settings.http_body_timeout_s,
    }


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """X-Request-Id on every response, streams too: they send their headers before the handler returns."""
    request_id = REQUEST_ID.get()
    if request_id:
        response.headers["X-Request-Id"] = request_id


def public_message(status: int, message: str | None) -> str:
    """What a client may read of an error: a 4xx's message as it is; for a 5xx the services' own 503/504
    sentences or else the generic text, with the request id either way."""
    if status < 500:
        return message or ""
    shown = status in SHOWN_5XX and isinstance(message, str) and not _INTERNAL_TEXT.search(message)
    text = message if shown and message else PUBLIC_5XX.get(status, "internal error")
    return f"{text} (request id {REQUEST_ID.get() or ''})"


def _public_error(status: int, message: str | None = None, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"message": public_message(status, message), "request_id": REQUEST_ID.get() or ""}
    if details and status in SHOWN_5XX:  # google.rpc details a service sent: structured, for programs
        body["details"] = details
    return web.json_response(body, status=status)


@web.middleware
async def no_internal_text(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every 5xx answer (but /readyz's report) gets the request id and only text fit for a client."""
    response = await handler(request)
    if response.status < 500 or request.path == "/readyz" or not isinstance(response, web.Response):
        return response
    body: Any = None
    if response.content_type == "application/json" and isinstance(response.body, bytes):
        try:
            body = json.loads(response.body)
        except ValueError:
            body = None
    message = body.get("message") if isinstance(body, dict) else None
    log.warning("%s %s answered %d: %s", request.method, request.path, response.status, message or response.text)
    details = body.get("details") if isinstance(body, dict) else None
    return _public_error(response.status, message if isinstance(message, str) else None, details)


def read_body_within(timeout_s: float, max_bytes: int) -> Middleware:
    """Read a request's whole body before the handler, within `timeout_s` (408 after), so a client that
    stops half-way holds no handler. request.read() keeps the bytes for the handler. A Content-Length
    over `max_bytes` is refused before any of the body is read (a larger chunked body: once it is)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > max_bytes:
            response = web.json_response({"message": f"request body is larger than {max_bytes} bytes"}, status=413)
            response.force_close()
            return response
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout_s):
                    await request.read()
            except TimeoutError:
                response = web.json_response(
                    {"message": f"the request body did not arrive within {timeout_s:g} s"}, status=408
                )
                response.force_close()
                return response
            except RequestPayloadError as error:  # e.g. the connection closed before Content-Length bytes
                response = web.json_response({"message": f"the request body is incomplete: {error}"}, status=400)
                response.force_close()
                return response
        return await handler(request)

    return middleware


def http_client(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The client of a request: its peer's address, or behind a trusted proxy the right-most untrusted
    X-Forwarded-For entry (common/rpc/clients.py); an untrusted peer's X-Forwarded-For is ignored."""
    return client_address(request.remote or "", request.headers.getall("X-Forwarded-For", ()), trusted)


class TokenBuckets:
    """One token bucket per client address: `rate` requests a second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when counted)

    def take(self, address: str, now: float) -> float:
        """0 when a request may go now, else the seconds until it may."""
        tokens, then = self.buckets.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._keep(address, tokens - 1, now)
            return 0.0
        self._keep(address, tokens, now)
        return (1 - tokens) / self.rate

    def _keep(self, address: str, tokens: float, now: float) -> None:
        self.buckets[address] = (tokens, now)
        if len(self.buckets) > MAX_RATE_CLIENTS:  # forget addresses whose buckets have refilled: as if new
            full_after = self.burst / self.rate
            self.buckets = {a: (t, w) for a, (t, w) in self.buckets.items() if now - w < full_after}


def rate_limit(rate: float, burst: int, trusted: tuple[Network, ...] = ()) -> Middleware:
    """429 with Retry-After for a client address beyond its bucket. Behind a load balancer, name it in
    PROFILEMESH_TRUSTED_PROXIES, or every request counts as the balancer's."""
    buckets = TokenBuckets(rate, burst)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNLIMITED_PATHS:
            return await handler(request)
        client = http_client(request, trusted)
        wait_s = buckets.take(client, time.monotonic())
        if wait_s > 0:
            return web.json_response(
                {"message": f"too many requests from {client[:64]}: at most {rate:g} a second; retry later"},
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
            )
        return await handler(request)

    return middleware
