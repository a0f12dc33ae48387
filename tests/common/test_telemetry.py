from __future__ import annotations

import io
import json
import logging
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from services.common.telemetry import (
    JsonFormatter,
    Telemetry,
    current_span,
    setup_logging,
    setup_telemetry,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    result = setup_telemetry(
        "test-svc",
        metrics_port=free_port(),
        metrics_host="127.0.0.1",
        registry=CollectorRegistry(),
        set_global=False,
    )
    yield result
    result.shutdown()


def test_counter_is_scraped_over_http(telemetry: Telemetry) -> None:
    assert telemetry.metrics_server is not None
    counter = telemetry.meter_provider.get_meter("volte.test").create_counter(
        "sip_requests", description="SIP requests received"
    )
    counter.add(3, {"method": "INVITE"})
    port = telemetry.metrics_server.server_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    samples = [line for line in body.splitlines() if line.startswith("sip_requests_total{")]
    assert len(samples) == 1, body
    assert 'method="INVITE"' in samples[0]
    assert samples[0].endswith(" 3.0")
    assert 'service_name="test-svc"' in body  # target_info carries the resource


def test_port_zero_disables_the_endpoint() -> None:
    telemetry = setup_telemetry(
        "test-svc", metrics_port=0, registry=CollectorRegistry(), set_global=False
    )
    try:
        assert telemetry.metrics_server is None
    finally:
        telemetry.shutdown()


def _log_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_log_lines() -> None:
    stream = io.StringIO()
    setup_logging("sbc", "DEBUG", stream)
    try:
        log = logging.getLogger("volte.sbc.test")
        log.info("registered %s", "sip:alice@ims.example", extra={"expires": 600, "level": "x"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
        setup_logging("sbc", "DEBUG", stream)  # a second call replaces, never duplicates
        log.debug("once")
    finally:
        root = logging.getLogger()
        for handler in root.handlers[:]:
            if isinstance(handler.formatter, JsonFormatter):
                root.removeHandler(handler)
    first, second, third = _log_lines(stream)
    assert first["service"] == "sbc"
    assert first["level"] == "INFO"  # an extra never hides a core field
    assert first["logger"] == "volte.sbc.test"
    assert first["message"] == "registered sip:alice@ims.example"
    assert first["expires"] == 600
    assert "ValueError: boom" in str(second["exc"])
    assert third["message"] == "once"


def test_log_line_carries_the_current_span() -> None:
    record = logging.makeLogRecord({"msg": "in a span", "levelname": "INFO"})
    with TracerProvider().get_tracer("test").start_as_current_span("call") as span:
        line = json.loads(JsonFormatter("sbc").format(record))
        context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_current_span_is_the_parent_of_what_runs_inside_and_records_failures() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    record = logging.makeLogRecord({"msg": "in a span", "levelname": "INFO"})
    with current_span(tracer, "SIP INVITE") as outer, current_span(tracer, "StateStore/Route"):
        line = json.loads(JsonFormatter("sbc").format(record))
    assert not trace.get_current_span().get_span_context().is_valid  # detached again
    with pytest.raises(ValueError), current_span(tracer, "SIP BYE"):
        raise ValueError("bad")
    inner, sip, failed = exporter.get_finished_spans()
    assert inner.parent is not None and inner.parent.span_id == sip.context.span_id
    assert sip.context.span_id == outer.get_span_context().span_id and sip.parent is None
    assert line["span_id"] == f"{inner.context.span_id:016x}"
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]


def test_one_trace_in_a_hundred_is_recorded_unless_otel_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def recorded(sampler_env: str | None) -> int:
        if sampler_env is None:
            monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
        else:
            monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler_env)
        telemetry = setup_telemetry(
            "test-svc", metrics_port=0, registry=CollectorRegistry(), set_global=False
        )
        tracer = telemetry.tracer_provider.get_tracer("test")
        spans = [tracer.start_span("SIP INVITE") for _ in range(2000)]
        assert all(s.get_span_context().is_valid for s in spans)  # ids for the logs, always
        return sum(s.is_recording() for s in spans)

    assert 0 < recorded(None) < 60  # about 20
    assert recorded("always_on") == 2000
