"""Traces and metrics: the state call a SIP transaction makes is a child span of it.

The sbc and the state service run in this process (so one in-memory exporter sees both
services' spans) but talk over a real gRPC connection on loopback to a real Redis: the trace
context crosses in the gRPC metadata, as it does between pods. With the sbc running the store's
operations itself (`--state-redis`), the span is its own, the same child of the transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.sbc.config import SbcConfig
from services.sbc.core import Sbc
from services.sbc.state_client import DirectStateClient, GrpcStateClient, StateClient
from services.state.service import StateServer
from services.state.store import RedisStore
from services.subscribers import subscriber
from tests.interop.sipclient import SipClient
from tests.state.helpers import RedisProcess
from volte.v1 import state_pb2

pytestmark = pytest.mark.interop

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracing() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process; this module is the one that does


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(params=["grpc", "redis"])
async def sbc(redis: RedisProcess, request: pytest.FixtureRequest) -> AsyncIterator[Sbc]:
    store = RedisStore.from_url(redis.url)
    server = StateServer(store, listen="127.0.0.1:0")
    port = await server.start()
    await server.servicer.api.PutSubscriber(
        state_pb2.PutSubscriberRequest(subscriber=subscriber("300000", "ims.local", "pw"))
    )
    state: StateClient = (
        GrpcStateClient(f"127.0.0.1:{port}", timeout=1.0)
        if request.param == "grpc"
        else DirectStateClient.from_url(redis.url, 1.0, "test")
    )
    node = Sbc(SbcConfig(sip_port=0, nonce_secret="k"), state)
    await node.start()
    yield node
    await node.stop()
    await state.close()
    await server.stop(grace=1)
    await store.close()


async def test_register_span_has_the_state_rpc_as_child(sbc: Sbc) -> None:
    EXPORTER.clear()
    ue = SipClient(("127.0.0.1", sbc.port), "300000")
    try:
        response = await asyncio.to_thread(ue.register, "pw")
    finally:
        ue.close()
    assert response.status == 200
    await asyncio.sleep(0.1)
    spans = EXPORTER.get_finished_spans()
    sip = [s for s in spans if s.name == "SIP REGISTER"]
    rpc = [s for s in spans if s.name == "StateStore/Register"]
    assert len(sip) == 2  # the challenged REGISTER and the authorized one
    assert len(rpc) == 1  # one state RPC for the whole authorized transaction
    parent = rpc[0].parent
    assert parent is not None
    authorized = next(s for s in sip if s.context.span_id == parent.span_id)
    assert rpc[0].context.trace_id == authorized.context.trace_id
