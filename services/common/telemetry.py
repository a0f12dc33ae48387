"""Telemetry every service sets up the same way at start-up.

- Logs: one JSON object per line on stderr (what Kubernetes log collectors ingest), carrying the
  service name, level, logger, message, any `extra=` fields and the current trace/span ids.
- Metrics: an OpenTelemetry MeterProvider whose reader is the Prometheus exporter, served by
  prometheus_client's HTTP server at /metrics on `metrics_port` (0 turns the endpoint off).
- Traces: an OpenTelemetry TracerProvider with the same resource. Span ids reach the logs;
  1 trace in 100 is recorded (OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose otherwise);
  exporting spans needs an exporter, which is added when a collector is deployed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any
from wsgiref.simple_server import WSGIServer

from opentelemetry import context, metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from services import __version__

# Traces recorded unless OTEL_TRACES_SAMPLER says otherwise: 1 in 100, and what a sampled
# caller's trace context asks for.
DEFAULT_TRACE_RATIO = 0.01
DEFAULT_SAMPLER = ParentBased(TraceIdRatioBased(DEFAULT_TRACE_RATIO))

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                entry.setdefault(key, value)  # never let an extra hide a core field
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot encode (an address tuple, an enum) still logs.
        return json.dumps(entry, default=str, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(service: str, level: int | str = "INFO", stream: IO[str] | None = None) -> None:
    """Send all logging through one JSON-lines handler on `stream` (default stderr)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(old)
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)


@dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    # None when the Prometheus endpoint is disabled (metrics_port 0).
    metrics_server: WSGIServer | None

    def shutdown(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def setup_telemetry(
    service: str,
    *,
    metrics_port: int,
    metrics_host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
    set_global: bool = True,
) -> Telemetry:
    """Create the providers and start the Prometheus endpoint.

    `set_global` installs the providers as OpenTelemetry's process-wide ones, which the API
    allows once per process; tests pass False and their own `registry`.
    """
    resource = Resource.create(
        {
            "service.namespace": "volte",
            "service.name": service,
            "service.version": __version__,
            # The pod name on Kubernetes: tells replicas apart.
            "service.instance.id": socket.gethostname(),
        }
    )
    # Spans of a sampled trace are recorded; the others keep their ids (logs, propagation)
    # at a fraction of the CPU. OpenTelemetry's OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
    # choose otherwise (always_on: every transaction).
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else DEFAULT_SAMPLER
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PrometheusMetricReader(registry=registry)]
    )
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    server = None
    if metrics_port:
        server, _thread = start_http_server(metrics_port, addr=metrics_host, registry=registry)
    return Telemetry(tracer_provider, meter_provider, server)


class current_span:  # lower case: used like the context manager function it replaces
    """`with current_span(tracer, name) as span:` a new span, the current one while the block
    runs (its children's parent, its ids in the logs), ended after it; an exception escaping
    the block is recorded on it. What tracer.start_as_current_span does, without its two
    generator-based context managers, which cost the sbc a noticeable share of its CPU per call.
    """

    __slots__ = ("span", "token")

    def __init__(self, tracer: trace.Tracer, name: str) -> None:
        self.span = tracer.start_span(name)

    def __enter__(self) -> trace.Span:
        self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        context.detach(self.token)
        if isinstance(exc, Exception):
            self.span.record_exception(exc)
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}"))
        self.span.end()
