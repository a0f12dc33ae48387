"""The sbc's BearerControl client against a real gRPC server on loopback. The server's
servicer is the test's own (it counts requests and answers NOT_FOUND or a bearer as told):
what is tested is the client's memory of UEs attached nowhere, not the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.sbc.bearer_client import NOT_ATTACHED_SECONDS, BearerClient, NotAttached
from volte.v1 import bearer_pb2, bearer_pb2_grpc, common_pb2


class Agent(bearer_pb2_grpc.BearerControlServicer):
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.attached: set[str] = set()

    async def SetupBearer(self, request: bearer_pb2.SetupBearerRequest,
                          context: grpc.aio.ServicerContext[Any, Any],
                          ) -> bearer_pb2.SetupBearerResponse:
        self.asked.append(request.imsi)
        if request.imsi not in self.attached:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no UE context for {request.imsi}")
        return bearer_pb2.SetupBearerResponse(bearer=bearer_pb2.Bearer(bearer_id="b1"))


@pytest.fixture
async def agent() -> AsyncIterator[tuple[Agent, str]]:
    server = grpc.aio.server()
    servicer = Agent()
    bearer_pb2_grpc.add_BearerControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_a_ue_attached_nowhere_is_not_asked_for_again_for_a_while(
    agent: tuple[Agent, str]
) -> None:
    servicer, target = agent
    now = [100.0]
    client = BearerClient(target, timeout=2.0, clock=lambda: now[0])
    dialog = common_pb2.DialogId(call_id="c", from_tag="f", to_tag="t")
    try:
        for _ in range(3):
            with pytest.raises(NotAttached, match="NOT_FOUND"):  # fresh and remembered alike
                await client.setup("001010000000001", dialog)
        assert servicer.asked == ["001010000000001"]  # once, then remembered
        servicer.attached.add("001010000000001")  # the UE attaches ...
        now[0] += NOT_ATTACHED_SECONDS + 0.1  # ... and after the window it gets its bearer
        assert await client.setup("001010000000001", dialog) == "b1"
        assert await client.setup("001010000000001", dialog) == "b1"
        assert len(servicer.asked) == 3
    finally:
        await client.close()
