"""Limits of long-lived streams, shared by the services' Watch RPCs and the gateway's SSE routes.

A stream holds its slot for minutes, so it gets bounds a unary call doesn't need: at most
PROFILEMESH_MAX_STREAMS per process, an idle lifetime (no event, only heartbeats, for
PROFILEMESH_STREAM_IDLE_S), a maximum lifetime (PROFILEMESH_STREAM_MAX_S), and an end as soon as the
process drains, so clients reconnect to a replica that stays. (Unary load shedding, in
common/rpc/interceptors.py, leaves streams to these bounds.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import grpc

from common.errors import StreamEnded, TooManyStreams
from common.rpc.clients import FORWARDED_METADATA, client_address, grpc_peer_address, parse_networks
from common.runtime.config import StreamSettings

DRAINING = "the server is shutting down; reconnect"


class StreamLimits:
    """The process's stream slots, and each client's share of them: one client address (common/rpc/clients.py)
    holds at most PROFILEMESH_STREAM_CLIENT_SHARE_PERCENT of PROFILEMESH_MAX_STREAMS (at least one), so one
    address can't lock everyone else out."""

    def __init__(self, settings: StreamSettings) -> None:
        self.max_streams = settings.max_streams
        self.per_client = max(1, settings.max_streams * settings.client_share_percent // 100)
        self.by_client: dict[str, int] = {}  # client -> streams it holds (only clients holding one)
        self.idle_s = settings.idle_s
        self.max_s = settings.max_s
        self.heartbeat_s = settings.heartbeat_s
        self.trusted = parse_networks(settings.trusted_proxies)
        self.draining = False
        self._clocks: set[StreamClock] = set()

    def grpc_client(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Whom a Watch call is for: its gRPC peer's address, or the client a trusted peer (the gateway) names."""
        forwarded = [
            value
            for key, value in context.invocation_metadata() or ()
            if key == FORWARDED_METADATA and isinstance(value, str)
        ]
        return client_address(grpc_peer_address(context.peer()), forwarded, self.trusted)

    @property
    def open(self) -> int:
        return len(self._clocks)

    def drain(self) -> None:
        """End every open stream (each at its next wait) and refuse new ones."""
        self.draining = True
        for clock in list(self._clocks):
            clock.stop(StreamEnded(DRAINING))

    @contextlib.contextmanager
    def slot(self, client: str) -> Iterator[StreamClock]:
        """A slot for a stream of `client` (its address, from common/rpc/clients.py), while the block runs."""
        if self.draining:
            raise StreamEnded(DRAINING)
        if self.open >= self.max_streams:
            raise TooManyStreams(f"too many streams open (at most {self.max_streams} per process); retry later")
        held = self.by_client.get(client, 0)
        if held >= self.per_client:
            raise TooManyStreams(
                f"too many streams from one client (at most {self.per_client} of this process's"
                f" {self.max_streams}); close one or retry later",
                reason="TOO_MANY_STREAMS_FROM_CLIENT",
            )
        clock = StreamClock(self)
        self._clocks.add(clock)
        self.by_client[client] = held + 1
        try:
            yield clock
        finally:
            self._clocks.discard(clock)
            left = self.by_client.pop(client, 1) - 1
            if left > 0:
                self.by_client[client] = left


class StreamClock:
    """One stream's lifetimes and heartbeats, and the event that wakes it when it has something to send."""

    def __init__(self, limits: StreamLimits) -> None:
        now = time.monotonic()
        self.limits = limits
        self.wake = asyncio.Event()
        self.ends_at = now + limits.max_s
        self.last_event = now
        self.last_message = now
        self.stopped: Exception | None = None

    def stop(self, error: Exception) -> None:
        """End the stream with `error`: the next wait raises it (after the write in progress, if any,
        since gRPC sends the status only after the messages before it)."""
        if self.stopped is None:
            self.stopped = error
        self.wake.set()

    async def send(self, write: Coroutine[Any, Any, None]) -> None:
        """Await a write to the client. One that stops reading blocks it (flow control); after the idle
        lifetime the stream is given up, so such a client can't hold a slot for ever."""
        try:
            async with asyncio.timeout(self.limits.idle_s):
                await write
        except TimeoutError:
            raise StreamEnded(f"the client read nothing for {self.limits.idle_s} s") from None

    def sent(self, event: bool = True) -> None:
        """Record a message sent: an event keeps the stream from being idle, a heartbeat does not."""
        self.last_message = time.monotonic()
        if event:
            self.last_event = self.last_message

    def heartbeat_due(self) -> bool:
        """Whether a heartbeat is due now, for a stream busy with work that sends nothing (a filtered catch-up);
        raises the stream's end when it must end, so such work stops on a drain too."""
        if self.stopped is not None:
            raise self.stopped
        return time.monotonic() >= self.last_message + self.limits.heartbeat_s

    async def wait(self) -> bool:
        """Wait until woken (True) or until a heartbeat is due (False); raise StreamEnded when the stream must end."""
        while True:
            if self.stopped is not None:
                raise self.stopped
            now = time.monotonic()
            if now >= self.ends_at:
                raise StreamEnded(f"the stream reached its maximum lifetime of {self.limits.max_s} s; reconnect")
            idle_until = self.last_event + self.limits.idle_s
            if now >= idle_until:
                raise StreamEnded(f"no event for {self.limits.idle_s} s; reconnect")
            heartbeat_at = self.last_message + self.limits.heartbeat_s
            if now >= heartbeat_at:
                return False
            if not self.wake.is_set():
                try:
                    async with asyncio.timeout(min(heartbeat_at, idle_until, self.ends_at) - now):
                        await self.wake.wait()
                except TimeoutError:
                    continue
            if self.stopped is not None:
                raise self.stopped
            self.wake.clear()
            return True
