"""gRPC server bootstrap shared by every service: create the server, run it until signalled, drain it.

As gRPC's route_guide example structures a server (create, start, wait for termination), with what a
service behind load balancers needs besides: health and reflection, and a drain on SIGTERM. The process
around it (settings, logs, traces, metrics) is common/runtime/startup.py's; how errors become statuses is
common/rpc/status.py's job.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from common.errors import StartupError
from common.rpc import tls
from common.rpc.interceptors import ObservingInterceptor, SheddingInterceptor
from common.runtime.config import Settings
from common.runtime.startup import run_component
from common.storage.cluster import CLUSTER_FAILURES, Cluster

log = logging.getLogger(__name__)

# Bodies are bounded at 64 KiB by the gateway; 1 MiB leaves room for gRPC callers
# while keeping a flood of oversized messages from eating memory.
MAX_MESSAGE_BYTES = 1 << 20
HEALTH_INTERVAL_S = 1.0
BIND_WAIT_S = 65
# Background tasks end within the shutdown budget (drain + grace) of SIGTERM, and have at least this long.
STOP_TASKS_MIN_S = 1.0
# The exit status of a process whose background task would not stop (sysexits' EX_SOFTWARE: a bug of ours).
EXIT_STUCK = 70


async def _watch_cluster(
    cluster: Cluster,
    health: health_aio.HealthServicer,
    services: Iterable[str],
    checks: Iterable[Callable[[], Awaitable[object]]] = (),
) -> None:
    """Keep health in step with the cluster: SERVING only while it answers, and once what the process records
    in or checks against the cluster at start (the partition count, its `checks`) has been done."""
    verified = False
    previous = None
    while True:
        healthy = await cluster.ping()
        if healthy and not verified:
            try:
                await cluster.verify_partitions()  # a PartitionMismatch ends the process
                await cluster.verify_functions()  # so does a FunctionsMissing
                for check in checks:
                    await check()
                verified = True
            except CLUSTER_FAILURES as error:
                log.warning("cannot check the partition count and functions yet: %r", error)
                healthy = False
        status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        if status != previous:
            log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
            for service in ("", *services):
                await health.set(service, status)
            previous = status
        await asyncio.sleep(HEALTH_INTERVAL_S)


async def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None) -> None:
    """Listen on `listen`, waiting up to BIND_WAIT_S for the port to be free.

    Ports such as 50051 lie in Linux's ephemeral range: an outgoing connection may have used one
    as its local port, and once closed it lingers in TIME_WAIT for 60 s, during which even
    SO_REUSEADDR can't bind it. That passes; a real listener does not.
    """
    waited = 0
    while True:
        try:
            if credentials is None:
                server.add_insecure_port(listen)
            else:
                server.add_secure_port(listen, credentials)
            return
        except RuntimeError:
            if waited >= BIND_WAIT_S:
                raise StartupError(f"cannot listen on {listen}: the port is in use") from None
            if waited % 10 == 0:
                log.warning(
                    "cannot listen on %s yet (in use, or held by a closed connection in TIME_WAIT); waiting up to %d s",
                    listen,
                    BIND_WAIT_S - waited,
                )
            await asyncio.sleep(1)
            waited += 1


async def _stop_tasks(tasks: list[asyncio.Task[None]], within_s: float) -> None:
    """Cancel the background tasks and wait for them, up to `within_s`.

    A task still running then has lost its cancellation (something under it caught the CancelledError:
    see common/runtime/cancellation.py for the case that hung the aggregator) and would hold the process forever,
    since asyncio.run waits for every task. That is a bug: its stack is logged, so the log names the
    place, and the process exits with EXIT_STUCK rather than outliving its orchestrator's patience.
    """
    for task in tasks:
        task.cancel()
    _, running = await asyncio.wait(tasks, timeout=within_s)
    if not running:
        return
    stacks = io.StringIO()
    for task in asyncio.all_tasks() - {asyncio.current_task()}:  # the stuck ones and whatever they wait for
        task.print_stack(file=stacks)
    names = ", ".join(sorted(task.get_name() for task in running))
    log.error(
        "%s did not stop within %.1f s of its cancellation; every task left:\n%s", names, within_s, stacks.getvalue()
    )
    logging.shutdown()
    os._exit(EXIT_STUCK)


@dataclass
class Service:
    """What a process serves: its gRPC services (for health and reflection) and its background jobs."""

    names: list[str]
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Called when SIGTERM arrives, e.g. to end long-lived streams so their clients reconnect elsewhere.
    on_drain: list[Callable[[], None]] = field(default_factory=list)
    # Run once the cluster answers, before the process reports SERVING (retried until they succeed).
    on_cluster: list[Callable[[], Awaitable[object]]] = field(default_factory=list)


def service_main(
    command: str,
    component: str,
    process: str,
    listen: Callable[[Settings], str],
    build: Callable[[grpc.aio.Server, Cluster], Service],
) -> None:
    """A service's console script: the components' one start-up (common/runtime/startup.py), then the cluster
    client and `serve` until a signal."""

    def run(settings: Settings) -> None:
        async def main() -> None:
            cluster = Cluster(settings)
            await cluster.check_credentials()  # a refused user or password: StartupError, the process exits
            await serve(listen(settings), cluster, lambda server: build(server, cluster))

        # asyncio's own loop: uvloop measured no gain in the services (bench.observability A/B, 3 rounds:
        # 3,475-4,260 against 3,588-4,679 req/s), unlike in the gateway.
        asyncio.run(main())

    run_component(command, component, process, run)


async def serve(listen: str, cluster: Cluster, build: Callable[[grpc.aio.Server], Service]) -> None:
    """Run a gRPC server until SIGTERM or SIGINT, then drain it: create, run until signalled, drain.

    ``build`` adds the servicers and says what the process serves. On a signal,
    health turns NOT_SERVING first, so load balancers stop sending before the listener closes.
    """
    running = await _create(listen, cluster, build)
    failure = await _run_until_signalled(running, cluster)
    await _drain(running, cluster.settings)
    await cluster.close()
    if failure is not None:
        raise failure
    log.info("stopped")


@dataclass
class _Running:
    """A started server, its health service and what it serves; the background tasks once they run."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    served: Service
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """Shedding first (a refused call is counted, not timed), then observing, then the allow-list if set, so
    that a call it refuses is counted and timed too."""
    try:
        allowed_clients = tls.parse_allowed_clients(settings.grpc_allowed_clients)
    except ValueError as error:
        raise StartupError(str(error)) from None
    if allowed_clients and not settings.grpc_ca_file:
        raise StartupError(
            "PROFILEMESH_GRPC_ALLOWED_CLIENTS needs PROFILEMESH_GRPC_CA_FILE: identities come from client certificates"
        )
    # Unary calls beyond PROFILEMESH_MAX_IN_FLIGHT are answered RESOURCE_EXHAUSTED, and counted.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        SheddingInterceptor(settings.max_in_flight),
        ObservingInterceptor(),
    ]
    if allowed_clients:
        interceptors.append(tls.AllowedClients(allowed_clients))
    return interceptors


async def _create(listen: str, cluster: Cluster, build: Callable[[grpc.aio.Server], Service]) -> _Running:
    """The server with its servicers, health (NOT_SERVING until the cluster answers) and reflection, listening."""
    settings = cluster.settings
    server = grpc.aio.server(
        interceptors=_interceptors(settings),
        # A backstop above the shedding and the stream limit (common/rpc/streams.py), so that a flood
        # that outruns Python still can't queue without bound. gRPC core refuses calls beyond it
        # before any Python runs: only callers see those.
        maximum_concurrent_rpcs=2 * settings.max_in_flight + settings.max_streams,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Fail loudly if the port is taken rather than silently sharing it.
            ("grpc.so_reuseport", 0),
            # Accept the gateway's keepalive pings (every 30 s on a long stream). gRPC's default allows one
            # per 5 minutes and answers more with GOAWAY "too_many_pings", dropping the connection.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    served = build(server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in ("", *served.names):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [*served.names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    credentials = tls.server_credentials(settings)
    await _bind(server, listen, credentials)
    await server.start()
    security = (
        "plaintext"
        if credentials is None
        else "TLS" + (", client certificates required" if settings.grpc_ca_file else "")
    )
    log.info("listening on %s (%s)", listen, security)
    return _Running(server, health, served)


async def _run_until_signalled(running: _Running, cluster: Cluster) -> BaseException | None:
    """Keep health in step with the cluster and run the background jobs until SIGTERM or SIGINT, or until one of
    them ends (a failure, returned: the process drains, then raises it)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    served = running.served
    health = _watch_cluster(cluster, running.health, served.names, served.on_cluster)
    running.tasks = [asyncio.create_task(health, name="health")]
    running.tasks += [asyncio.create_task(job(), name=getattr(job, "__name__", "job")) for job in served.background]
    stop_wait = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([stop_wait, *running.tasks], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    failure = None
    for task in done - {stop_wait}:
        failure = task.exception() or RuntimeError(f"{task.get_name()} ended unexpectedly")
        # A StartupError's message says it all (the process exits with it): no stack.
        stack = None if isinstance(failure, StartupError) else failure
        log.error("%s failed; shutting down", task.get_name(), exc_info=stack)
    return failure


async def _drain(running: _Running, settings: Settings) -> None:
    """NOT_SERVING for PROFILEMESH_DRAIN_MS (streams told to end), then calls get PROFILEMESH_SHUTDOWN_GRACE_S to
    finish; the background tasks stop within what is left of both."""
    log.info(
        "shutting down: NOT_SERVING for %d ms, then draining up to %d s", settings.drain_ms, settings.shutdown_grace_s
    )
    loop = asyncio.get_running_loop()
    stop_by = loop.time() + settings.drain_ms / 1000 + settings.shutdown_grace_s
    await running.health.enter_graceful_shutdown()
    for drain in running.served.on_drain:
        drain()
    # Load balancers and clients see NOT_SERVING (and go elsewhere) before the listener closes.
    await asyncio.sleep(settings.drain_ms / 1000)
    await running.server.stop(settings.shutdown_grace_s)
    await _stop_tasks(running.tasks, max(stop_by - loop.time(), STOP_TASKS_MIN_S))
