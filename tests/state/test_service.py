"""The service as operators see it: Redis going away and coming back, and the process itself
(`python -m services.state`) starting, reporting health and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.state.service import StateServer
from services.state.store import RedisStore
from tests.state.helpers import FakeClock, RedisProcess, change, free_port, start_api, subscriber
from volte.v1 import state_pb2, state_pb2_grpc

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_health(stub: health_pb2_grpc.HealthStub, want: int, within: float) -> float:
    """Seconds until the overall status is `want`."""
    start = time.monotonic()
    while True:
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
        if response.status == want:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"health still {response.status}"
        await asyncio.sleep(0.02)


async def unavailable_within(call: object) -> float:
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value.details()
    assert "Redis unavailable" in (error.value.details() or "")
    print(f"UNAVAILABLE after {time.monotonic() - start:.3f} s: {error.value.details()}")
    return time.monotonic() - start


async def test_redis_outage_fails_fast_and_recovers(tmp_path: Path):
    server_process = RedisProcess(tmp_path / "redis", appendonly=True)
    server_process.start()
    store = RedisStore.from_url(server_process.url)
    server, channel = await start_api(store)
    try:
        async with channel:
            stub = state_pb2_grpc.StateStoreStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            await wait_health(health, SERVING, within=2)
            alice = subscriber(1)
            await stub.PutSubscriber(state_pb2.PutSubscriberRequest(subscriber=alice))

            server_process.stop()
            lookup = state_pb2.GetSubscriberRequest(impi=alice.impi)
            assert await unavailable_within(stub.GetSubscriber(lookup)) < 1.0
            write = state_pb2.PutSubscriberRequest(subscriber=subscriber(2))
            assert await unavailable_within(stub.PutSubscriber(write)) < 1.0
            await wait_health(health, NOT_SERVING, within=1.5)

            server_process.start()  # same port, same append-only file
            await wait_health(health, SERVING, within=2)
            assert (await stub.GetSubscriber(lookup)).impi == alice.impi
            await stub.PutSubscriber(write)

            # A Redis that hangs (a partition, not a refusal) must not hang the caller.
            assert server_process.proc is not None
            server_process.proc.send_signal(signal.SIGSTOP)
            try:
                assert await unavailable_within(stub.GetSubscriber(lookup)) < 1.2
            finally:
                server_process.proc.send_signal(signal.SIGCONT)
            await wait_health(health, SERVING, within=2)
            assert (await stub.GetSubscriber(lookup)).impi == alice.impi
    finally:
        await server.stop(grace=0)
        await store.close()
        server_process.stop()


async def test_metrics_count_rpcs_and_timers(store: RedisStore, clock: FakeClock):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = StateServer(store, sweep_interval=0.02, meter=provider.get_meter("test"))
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = state_pb2_grpc.StateStoreStub(channel)
            await stub.SaveBinding(change("sip:a@h", expires=1))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetSubscriber(state_pb2.GetSubscriberRequest(impi="nobody"))
            clock.advance(2)
            for _ in range(100):
                if not await store.lookup_bindings("sip:a@h") and _points(reader).get(
                    ("volte_state_timers_fired", (("kind", "binding"),))
                ):
                    break
                await asyncio.sleep(0.02)
    finally:
        await server.stop(grace=0)
    points = _points(reader)
    ok = ("volte_state_rpcs", (("code", "OK"), ("method", "SaveBinding")))
    missing = ("volte_state_rpcs", (("code", "NOT_FOUND"), ("method", "GetSubscriber")))
    fired = ("volte_state_timers_fired", (("kind", "binding"),))
    assert (points[ok], points[missing], points[fired]) == (1, 1, 1)


def _points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    data = reader.get_metrics_data()
    out = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = tuple(sorted((point.attributes or {}).items()))
                    out[(metric.name, labels)] = getattr(point, "value", None)
    return out


@pytest.mark.slow
def test_process_serves_then_drains_on_sigterm(redis_url: str):
    port = free_port()
    env = {**os.environ, "VOLTE_REDIS": redis_url, "VOLTE_SWEEP_INTERVAL": "0.2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.state", "--grpc-listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 15
            status = None
            while status != SERVING:
                assert time.monotonic() < deadline, "never SERVING"
                assert proc.poll() is None, proc.communicate()
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    time.sleep(0.05)
            stub = state_pb2_grpc.StateStoreStub(channel)
            sub = subscriber(1)
            stub.PutSubscriber(state_pb2.PutSubscriberRequest(subscriber=sub), timeout=2)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=8) == 0
        assert time.monotonic() - start < 6
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == b""  # logs go to stderr
    lines = [json.loads(line) for line in err.decode().splitlines()]
    messages = [line["message"] for line in lines]
    assert any("listening" in m for m in messages) and "draining" in messages
    assert all(line["service"] == "state" for line in lines)


def test_bad_redis_url_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "services.state", "--redis", "http://127.0.0.1:6379"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"--redis" in result.stderr and b"scheme" in result.stderr
