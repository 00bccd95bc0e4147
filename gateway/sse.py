"""Server-Sent Events for the server-streaming RPCs, on the paths of their google.api.http rules.

The rules give the path and, for request fields not in it, query parameters named after the fields
(`?users=ana&users=bob&types=delete`), as grpc-gateway reads them. What they can't express, and this
module adds:
- `text/event-stream` framing: each message as `data:` JSON, rendered like the unary routes' bodies;
- `id:` the message's resume_token when it has one, and the `Last-Event-ID` header (what a browser sends
  when it reconnects) as the request's resume_token;
- a `: keepalive` comment after PROFILEMESH_STREAM_HEARTBEAT_S of silence, so proxies keep the connection;
- the end: `event: end` with the status (and `id:` the resume token the service gave) and a `retry:` hint,
  when the upstream stream ends and when the gateway drains (SIGTERM).
An error before the first message is an ordinary JSON error with its HTTP status (400, 429, 503, ...).
A closed HTTP connection cancels the upstream call within CLOSE_CHECK_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
from aiohttp import web
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from multidict import MultiMapping

from common.errors import BadRequest, DeadlineExceeded, StreamEnded, TooManyStreams
from common.rpc.clients import FORWARDED_METADATA
from common.rpc.streams import StreamLimits
from gateway.edge import http_client, public_message
from gateway.errors import http_status, rendered_details, rich_status, rpc_error_response, service_error_response
from gateway.routes import Route
from gateway.translate import DECIMAL, INTEGER_TYPES, Field, build_request, render_response
from gateway.upstreams import CALLS

log = logging.getLogger(__name__)

CLOSE_CHECK_S = 0.2
RETRY_MS = 1000
RESUME_FIELD = "resume_token"
EVENT_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: don't buffer the stream
}


def build_stream_request(
    route: Route, path_params: dict[str, str], query: MultiMapping[str], last_event_id: str | None
) -> Message:
    """The route's request from its path, its query parameters (Route.query_fields, by name or JSON name) and
    the Last-Event-ID header."""
    request = build_request(route, path_params, b"")
    fields = route.query_fields
    by_name = {f.name: f for f in fields} | {f.json_name: f for f in fields}
    for name in set(query.keys()):
        field = by_name.get(name)
        if field is None:
            allowed = ", ".join(f.name for f in fields) or "none"
            raise BadRequest(f"unknown query parameter {name[:40]!r}: this path takes {allowed}", field=name[:40])
        values = query.getall(name)
        if field.is_repeated:
            getattr(request, field.name).extend(_scalar(field, value) for value in values)
        elif len(values) > 1:
            raise BadRequest(
                f"query parameter {name!r} is given {len(values)} times; it takes one value", field=field.name
            )
        else:
            setattr(request, field.name, _scalar(field, values[0]))
    if last_event_id and RESUME_FIELD in request.DESCRIPTOR.fields_by_name and not getattr(request, RESUME_FIELD):
        setattr(request, RESUME_FIELD, last_event_id)
    return request


def _scalar(field: Field, raw: str) -> Any:
    if field.type == FieldDescriptor.TYPE_STRING:
        return raw
    if field.type == FieldDescriptor.TYPE_BOOL and raw in ("true", "false"):
        return raw == "true"
    if field.cpp_type in INTEGER_TYPES and DECIMAL.fullmatch(raw):
        return int(raw, 10)
    raise BadRequest(f"query parameter {field.name!r} has an invalid value {raw[:40]!r}", field=field.name)


def _frame(data: Any, event: str | None = None, event_id: str | None = None, retry_ms: int | None = None) -> bytes:
    lines = []
    if event:
        lines.append(f"event: {event}")
    if event_id:
        lines.append(f"id: {event_id}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def _end(
    code: grpc.StatusCode, message: str, resume_token: str | None = None, details: list[Any] | None = None
) -> bytes:
    status = http_status(code)
    body: dict[str, Any] = {"code": code.name, "status": status, "message": public_message(status, message)}
    if details:
        body["details"] = details
    return _frame(body, event="end", event_id=resume_token, retry_ms=RETRY_MS)


def stream_handler(
    route: Route, limits: StreamLimits, deadline_s: float
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An SSE route for a server-streaming RPC."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            message = build_stream_request(
                route, dict(request.match_info), request.query, request.headers.get("Last-Event-ID")
            )
            client = http_client(request, limits.trusted)
            with limits.slot(client):
                # The services give each client its share too: the gateway says whom the stream is for.
                call = request.app[CALLS][route.grpc_path](message, metadata=[(FORWARDED_METADATA, client)])
                try:
                    return await _Relay(route, limits, request, call).answer(deadline_s)
                finally:
                    call.cancel()  # a no-op when it has ended; else the upstream stream stops at once
        except (BadRequest, TooManyStreams, StreamEnded) as error:
            return service_error_response(error)

    return handle


class _Relay:
    """One upstream stream written to its SSE response until the stream ends, the client leaves or the gateway
    drains; checked every CLOSE_CHECK_S while no message comes, with a keepalive after a silence."""

    def __init__(
        self,
        route: Route,
        limits: StreamLimits,
        request: web.Request,
        call: grpc.aio.UnaryStreamCall[Any, Message],
    ) -> None:
        self.route, self.limits, self.request, self.call = route, limits, request, call
        self.response = web.StreamResponse(headers=EVENT_STREAM_HEADERS)
        self.last_write = time.monotonic()

    async def answer(self, deadline_s: float) -> web.StreamResponse:
        """The first message decides between a JSON error and a 200 event stream, which then follows the call."""
        reading = asyncio.ensure_future(self.call.read())
        try:
            await asyncio.wait_for(asyncio.shield(reading), deadline_s)
        except TimeoutError:
            reading.cancel()
            return service_error_response(
                DeadlineExceeded(f"the service did not answer within {deadline_s:g} s", reason="UPSTREAM_TIMEOUT")
            )
        except grpc.aio.AioRpcError as error:
            return rpc_error_response(error)
        await self.response.prepare(self.request)
        try:
            await self._follow(reading)
        except (ConnectionResetError, ConnectionError):
            log.info("%s: the client went away; upstream call cancelled", self.route.path)
        return self.response

    async def _follow(self, reading: asyncio.Future[Any]) -> None:
        """Relay from the read under way (`reading`, done with the first message) until the stream ends."""
        self.last_write = time.monotonic()
        try:
            while True:
                if reading.done():
                    if await self._write(reading):
                        return
                    reading = asyncio.ensure_future(self.call.read())
                    continue
                await asyncio.wait({reading}, timeout=CLOSE_CHECK_S)
                if not reading.done() and await self._idle_ends():
                    return
        finally:
            reading.cancel()

    async def _write(self, reading: asyncio.Future[Any]) -> bool:
        """Write what the read brought: a message, or the end event (True) when the stream ended."""
        try:
            message = reading.result()
        except grpc.aio.AioRpcError as error:
            token = dict(error.trailing_metadata() or ()).get("resume-token")
            details = rendered_details(rich_status(error))
            await self.response.write(_end(error.code(), error.details() or error.code().name, token, details))
            return True
        if message is grpc.aio.EOF:
            await self.response.write(_end(grpc.StatusCode.OK, "the stream ended"))
            return True
        await self.response.write(_event(self.route, cast(Message, message)))  # not EOF: a message
        self.last_write = time.monotonic()
        return False

    async def _idle_ends(self) -> bool:
        """No message yet: end the relay if the client left or the gateway drains, else keep the line alive."""
        if self.request.transport is None or self.request.transport.is_closing():
            log.info("%s: the client closed the connection; upstream call cancelled", self.route.path)
            return True
        if self.limits.draining:
            await self.response.write(_end(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down; reconnect"))
            return True
        if time.monotonic() - self.last_write >= self.limits.heartbeat_s:
            await self.response.write(b": keepalive\n\n")
            self.last_write = time.monotonic()
        return False


def _event(route: Route, message: Message) -> bytes:
    """A message as an event: its rendering as `data:`, its resume token (when it has one) as `id:`."""
    token = getattr(message, RESUME_FIELD, None) if RESUME_FIELD in message.DESCRIPTOR.fields_by_name else None
    return _frame(render_response(route, message), event_id=token or None)
