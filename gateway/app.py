"""The gateway's aiohttp application: one handler per annotated RPC, JSON errors everywhere."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.errors import ServiceError
from common.rpc.clients import parse_networks
from common.rpc.streams import StreamLimits
from common.rpc.validation import check_request, check_user
from common.runtime import metrics
from common.runtime.config import Settings
from gateway import openapi
from gateway.coalesce import MemberError, ReadCoalescer, WriteCoalescer
from gateway.edge import no_internal_text, rate_limit, read_body_within, stamp_request_id
from gateway.errors import error_json, http_status, rendered_details, rpc_error_response, service_error_response
from gateway.observe import observe, outgoing_metadata
from gateway.routes import Route, routes_from
from gateway.sse import stream_handler
from gateway.translate import build_request, render_response
from gateway.upstreams import CALLS, UPSTREAMS, Upstreams
from profilemesh.profile.v1 import profile_pb2, profile_pb2_grpc
from profilemesh.reporting.v1 import reporting_pb2

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 1.0
DASHBOARD = Path(__file__).parent / "static" / "dashboard.html"

READS = web.AppKey("reads", ReadCoalescer)
WRITES = web.AppKey("writes", WriteCoalescer)
PROFILE_SERVICE = "/profilemesh.profile.v1.ProfileService/"
GET_PROFILE = PROFILE_SERVICE + "GetProfile"
# The routes whose requests the write coalescer batches, by the ProfileWriteRequest member each one is.
CHANGES = {PROFILE_SERVICE + "CreateProfile": "create", PROFILE_SERVICE + "UpdateProfile": "update"}
CHANGES[PROFILE_SERVICE + "DeleteProfile"] = "delete"
MAX_BODY = web.AppKey("max_body", int)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) as JSON bodies; never a traceback to the client."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = error.reason if error.status != 413 else f"request body is larger than {request.app[MAX_BODY]} bytes"
        return web.json_response({"message": message}, status=error.status, headers=_kept_headers(error))
    except Exception:
        log.exception("unexpected error for %s %s", request.method, request.path)
        return web.json_response({"message": "internal error"}, status=500)


def shed_load(limit: int) -> Middleware:
    """Answer 429 at once beyond `limit` requests in flight, instead of queueing without bound."""
    in_flight = 0

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal in_flight
        if in_flight >= limit and request.path not in ("/healthz", "/readyz"):
            metrics.HTTP_SHED.inc()
            return web.json_response({"message": "too many requests in flight; retry later"}, status=429)
        in_flight += 1
        try:
            return await handler(request)
        finally:
            in_flight -= 1

    return middleware


def _kept_headers(error: web.HTTPException) -> dict[str, str]:
    return {name: error.headers[name] for name in ("Allow",) if name in error.headers}


def _handler(route: Route, timeout_s: float, batched: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    if batched and route.grpc_path == GET_PROFILE:
        return _batched_get(route)
    if batched and route.grpc_path in CHANGES:
        return _batched_change(route, CHANGES[route.grpc_path])

    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if route.body else b""
        try:
            message = build_request(route, dict(request.match_info), body)
            check_request(message)  # bad input is a 400 even while the service is down
        except ServiceError as error:  # BadRequest, InvalidArgument
            return service_error_response(error)
        call = request.app[CALLS][route.grpc_path]
        try:
            response = await call(message, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as error:
            return rpc_error_response(error)
        return answer(route, response)

    return handle


def answer(route: Route, response: Message) -> web.Response:
    """A unary route's answer: the response as JSON, with the route's success status."""
    return web.json_response(render_response(route, response), status=route.success_status)


def _batched_get(route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /profile/{user} through the read coalescer (gateway/coalesce.py); same answers as one GetProfile."""

    async def handle(request: web.Request) -> web.Response:
        try:
            # Checked here, so that one bad name can't fail the batch it would have joined.
            user = check_user(request.match_info["user"])
            profile = await request.app[READS].get(user, outgoing_metadata())
        except ServiceError as error:  # a bad name
            return service_error_response(error)
        except MemberError as error:  # this member's own error, as GetProfile would have failed
            return error_json(http_status(error.code), error.rpc_status.message, rendered_details(error.rpc_status))
        except grpc.aio.AioRpcError as error:
            return rpc_error_response(error)
        return answer(route, profile)

    return handle


def _batched_change(route: Route, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST, PATCH or DELETE /profile/{user} through the write coalescer (gateway/coalesce.py); the same answers as
    its own CreateProfile, UpdateProfile or DeleteProfile."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if route.body else b""
        try:
            # Checked here, so that a bad request is a 400 of its own and never joins a batch.
            message = build_request(route, dict(request.match_info), body)
            check_request(message)
            change = profile_pb2.ProfileWriteRequest()
            getattr(change, kind).CopyFrom(message)
            response = await request.app[WRITES].ask(change, outgoing_metadata())
        except ServiceError as error:  # BadRequest, InvalidArgument
            return service_error_response(error)
        except MemberError as error:  # this change's own error, as its own call would have failed
            return error_json(http_status(error.code), error.rpc_status.message, rendered_details(error.rpc_status))
        except grpc.aio.AioRpcError as error:
            return rpc_error_response(error)
        return answer(route, response)

    return handle


async def healthz(request: web.Request) -> web.Response:
    """The gateway process itself is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when every upstream's gRPC health says SERVING."""

    async def check(service: str, channel: grpc.aio.Channel) -> tuple[str, str]:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=READY_TIMEOUT_S
            )
            return service, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as error:
            return service, error.code().name

    channels = request.app[UPSTREAMS].channels
    results = dict(await asyncio.gather(*(check(service, channel) for service, channel in channels.items())))
    ready = all(status == "SERVING" for status in results.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "upstreams": results}, status=200 if ready else 503
    )


async def dashboard(request: web.Request) -> web.FileResponse:
    """The live leaderboard: one static page that follows /reporting/profileStats/10/stream."""
    return web.FileResponse(DASHBOARD, headers={"Cache-Control": "no-cache"})


def build_app(settings: Settings) -> web.Application:
    """The gateway: its middleware, the probes, the dashboard, /openapi.json, and a handler per annotated RPC
    (SSE for the server-streaming ones); channels open when the app starts and close when it stops."""
    app = web.Application(client_max_size=settings.http_max_body_bytes, middlewares=_middlewares(settings))
    app[MAX_BODY] = settings.http_max_body_bytes
    app.on_response_prepare.append(stamp_request_id)
    routes = routes_from([profile_pb2.DESCRIPTOR, reporting_pb2.DESCRIPTOR])
    app.cleanup_ctx.append(_upstreams(settings, routes))
    streams = StreamLimits(settings.streams())

    async def drain_streams(app: web.Application) -> None:
        streams.drain()  # SSE streams end with a retry hint while the gateway drains

    app.on_shutdown.append(drain_streams)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/dashboard", dashboard, allow_head=False)
    app.router.add_get("/openapi.json", openapi.handler(routes), allow_head=False)
    deadline_s = settings.deadline_ms / 1000
    batched = settings.gateway_batch == "on"
    # Streaming routes first: /profile/events must not be taken for the profile of a user called "events".
    for route in sorted(routes, key=lambda r: not r.method.server_streaming):
        if route.method.server_streaming:
            app.router.add_route(route.http_method, route.path, stream_handler(route, streams, deadline_s))
        else:
            app.router.add_route(route.http_method, route.path, _handler(route, deadline_s, batched))
    return app


def _middlewares(settings: Settings) -> list[Middleware]:
    """Outermost first: observe every request, hide internals, then refuse (rate, load) before any body is read."""
    limited = (
        [rate_limit(settings.rate_limit_per_s, settings.rate_limit_burst, parse_networks(settings.trusted_proxies))]
        if settings.rate_limit_per_s > 0
        else []
    )
    return [
        observe,
        no_internal_text,
        *limited,
        shed_load(settings.max_in_flight),
        json_errors,
        read_body_within(settings.http_body_timeout_s, settings.http_max_body_bytes),
    ]


def _upstreams(settings: Settings, routes: list[Route]) -> Callable[[web.Application], AsyncIterator[None]]:
    """Channels to the services for as long as the app runs (grpc.aio channels need the running loop)."""
    profile_service = profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name
    targets = {
        profile_service: settings.profile_target,
        reporting_pb2.DESCRIPTOR.services_by_name["ReportingService"].full_name: settings.reporting_target,
    }

    async def opened(app: web.Application) -> AsyncIterator[None]:
        upstreams = app[UPSTREAMS] = Upstreams(targets, settings)
        app[CALLS] = upstreams.calls(routes)
        profiles = profile_pb2_grpc.ProfileServiceStub(upstreams.channels[profile_service])
        deadline_s = settings.deadline_ms / 1000
        app[READS] = ReadCoalescer(profiles.BatchGetProfiles, profiles.GetProfile, deadline_s)
        singles: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {
            "create": profiles.CreateProfile,
            "update": profiles.UpdateProfile,
            "delete": profiles.DeleteProfile,
        }
        app[WRITES] = WriteCoalescer(singles, profiles.BatchWriteProfiles, deadline_s)
        yield
        await upstreams.close()

    return opened
