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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import grpc
from aiohttp import web
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from multidict import MultiMapping

from common.errors import DeadlineExceeded, StreamEnded, TooManyStreams
from common.rpc.clients import FORWARDED_METADATA
from common.rpc.streams import StreamLimits
from common.runtime.config import Settings
from gateway import upstreams
from gateway.edge import http_client, public_message
from gateway.errors import http_status, rendered_details, rich_status, rpc_error_response, service_error_response
from gateway.routes import Route
from gateway.translate import DECIMAL, INTEGER_TYPES, BadRequest, Field, build_request, render_response

log = logging.getLogger(__name__)

CLOSE_CHECK_S = 0.2
RETRY_MS = 1000
RESUME_FIELD = "resume_token"
STREAM_CALLS = web.AppKey("stream_calls", dict)
STREAM_CHANNELS = web.AppKey("stream_channels", dict[str, grpc.aio.Channel])


def stream_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """Streams get channels of their own, without BDP probing: with it, gRPC grows a stream's receive
    window to megabytes, which a slow SSE client would make the gateway hold for each of its streams.
    At the default 64 KiB window the service's bounded queue takes the back-pressure instead."""
    return upstreams.channel(target, settings, extra_options=[("grpc.http2.bdp_probe", 0)])


def stream_calls(channels: Mapping[str, grpc.aio.Channel], routes: list[Route]) -> dict[str, Any]:
    """One callable per streaming method, made once like the unary ones."""
    return {
        route.grpc_path: channels[route.service].unary_stream(
            route.grpc_path,
            request_serializer=route.request_class().SerializeToString,
            response_deserializer=route.response_class().FromString,
        )
        for route in routes
        if route.method.server_streaming
    }


def build_stream_request(
    route: Route, path_params: dict[str, str], query: MultiMapping[str], last_event_id: str | None
) -> Message:
    request = build_request(route, path_params, b"")
    fields = request.DESCRIPTOR.fields
    by_name = {f.name: f for f in fields} | {f.json_name: f for f in fields}
    in_path = {f.name for f in route.path_fields}
    for name in set(query.keys()):
        field = by_name.get(name)
        if field is None or field.name in in_path:
            allowed = ", ".join(f.name for f in fields if f.name not in in_path) or "none"
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

    def render(message: Message) -> bytes:
        token = getattr(message, RESUME_FIELD, None) if RESUME_FIELD in message.DESCRIPTOR.fields_by_name else None
        return _frame(render_response(route, message), event_id=token or None)

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            message = build_stream_request(
                route, dict(request.match_info), request.query, request.headers.get("Last-Event-ID")
            )
            client = http_client(request, limits.trusted)
            with limits.slot(client):
                # The services give each client its share too: the gateway says whom the stream is for.
                call = request.app[STREAM_CALLS][route.grpc_path](message, metadata=[(FORWARDED_METADATA, client)])
                try:
                    return await relay(request, call)
                finally:
                    call.cancel()  # a no-op when it has ended; else the upstream stream stops at once
        except (BadRequest, TooManyStreams, StreamEnded) as error:
            return service_error_response(error)

    async def relay(request: web.Request, call: grpc.aio.UnaryStreamCall[Any, Message]) -> web.StreamResponse:
        # The first message decides between a JSON error and a 200 event stream.
        reading = asyncio.ensure_future(call.read())
        try:
            await asyncio.wait_for(asyncio.shield(reading), deadline_s)
        except TimeoutError:
            reading.cancel()
            return service_error_response(
                DeadlineExceeded(f"the service did not answer within {deadline_s:g} s", reason="UPSTREAM_TIMEOUT")
            )
        except grpc.aio.AioRpcError as error:
            return rpc_error_response(error)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: don't buffer the stream
            }
        )
        await response.prepare(request)
        last_write = time.monotonic()
        try:
            while True:
                if reading.done():
                    try:
                        message = reading.result()
                    except grpc.aio.AioRpcError as error:
                        token = dict(error.trailing_metadata() or ()).get("resume-token")
                        details = rendered_details(rich_status(error))
                        await response.write(_end(error.code(), error.details() or error.code().name, token, details))
                        return response
                    if message is grpc.aio.EOF:
                        await response.write(_end(grpc.StatusCode.OK, "the stream ended"))
                        return response
                    await response.write(render(cast(Message, message)))  # not EOF: a message
                    last_write = time.monotonic()
                    reading = asyncio.ensure_future(call.read())
                    continue
                await asyncio.wait({reading}, timeout=CLOSE_CHECK_S)
                if reading.done():
                    continue
                if request.transport is None or request.transport.is_closing():
                    log.info("%s: the client closed the connection; upstream call cancelled", route.path)
                    return response
                if limits.draining:
                    await response.write(_end(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down; reconnect"))
                    return response
                if time.monotonic() - last_write >= limits.heartbeat_s:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
        except (ConnectionResetError, ConnectionError):
            log.info("%s: the client went away; upstream call cancelled", route.path)
            return response
        finally:
            reading.cancel()

    return handle
