from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.health import HealthReporter, add_health

SERVICE = "volte.v1.StateStore"
Status = health_pb2.HealthCheckResponse


@pytest.fixture
async def server() -> AsyncIterator[tuple[HealthReporter, health_pb2_grpc.HealthStub]]:
    grpc_server = grpc.aio.server()
    reporter = await add_health(grpc_server, [SERVICE])
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield reporter, health_pb2_grpc.HealthStub(channel)
    await grpc_server.stop(grace=None)


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def test_not_serving_until_ready(server: tuple[HealthReporter, health_pb2_grpc.HealthStub]):
    reporter, stub = server
    assert await _check(stub, "") == Status.NOT_SERVING
    assert await _check(stub, SERVICE) == Status.NOT_SERVING
    await reporter.serving()
    assert await _check(stub, "") == Status.SERVING
    assert await _check(stub, SERVICE) == Status.SERVING


async def test_unknown_service_is_not_found(server):
    _, stub = server
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _check(stub, "volte.v1.Nope")
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sees_changes_and_shutdown_is_final(server):
    reporter, stub = server
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert (await watch.read()).status == Status.NOT_SERVING
    await reporter.serving()
    assert (await watch.read()).status == Status.SERVING
    await reporter.shutdown()
    assert (await watch.read()).status == Status.NOT_SERVING
    await reporter.serving()  # ignored after shutdown
    assert await _check(stub, SERVICE) == Status.NOT_SERVING
    watch.cancel()
