"""OpenTelemetry traces, exported over OTLP only when the standard OTel variables ask for it.

With no `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) nothing is set up and every
instrumented place checks `ENABLED` first, so tracing off costs one boolean test per call.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind as SpanKind  # re-exported: callers name span kinds through this module

ENABLED = bool(
    (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
    and os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "otlp"
)

tracer = trace.get_tracer("profilemesh")


def setup_tracing(component: str) -> None:
    """Install an OTLP/gRPC exporter behind a batch processor (OTEL_BSP_* tune it); nothing when off."""
    if not ENABLED:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or component
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def shutdown_tracing() -> None:
    """Flush spans still in the batch before the process exits."""
    provider = trace.get_tracer_provider()
    if ENABLED and hasattr(provider, "shutdown"):
        provider.shutdown()


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> AbstractContextManager[object]:
    """A span around a block when tracing is on; a no-op context otherwise."""
    if not ENABLED:
        return nullcontext()
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def server_span(name: str, carrier: dict[str, str], **attributes: Any) -> AbstractContextManager[object]:
    """A SERVER span whose parent is the W3C trace context the caller sent (traceparent, tracestate)."""
    if not ENABLED:
        return nullcontext()
    return tracer.start_as_current_span(
        name, context=propagate.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
    )


def inject(metadata: list[tuple[str, str]]) -> None:
    """Add the current trace context to outgoing gRPC metadata."""
    if ENABLED:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata.extend(carrier.items())
