"""A real redis-server per session (flushed between tests), a fake clock, RedisStores on it,
and the real gRPC server in-process with a client stub."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from grpc_health.v1 import health_pb2_grpc

from services.state.store import RedisStore
from tests.state.helpers import Api, FakeClock, RedisProcess, start_api
from volte.v1 import state_pb2_grpc


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> str:
    with redis.Redis(port=redis_process.port) as client:
        client.flushall()
    return redis_process.url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["redis-py", "lean"])
async def store(
    redis_url: str, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[RedisStore]:
    """On redis-py (the state service's client) and on LeanRedis (the sbc's)."""
    s = RedisStore.from_url(redis_url, clock=clock, lean=request.param == "lean")
    yield s
    await s.close()


@pytest.fixture
async def api(store: RedisStore) -> AsyncIterator[Api]:
    server, channel = await start_api(store)
    async with channel:
        yield Api(
            server, state_pb2_grpc.StateStoreStub(channel), health_pb2_grpc.HealthStub(channel)
        )
    await server.stop(grace=0)
