"""The sbc's side of the state service: the generated stub with deadlines and one failure type.

Every call has a deadline; a state service or Redis that does not answer in time, or answers
UNAVAILABLE, becomes `StateUnavailable`, which the sbc answers with 503 — never a hang.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from opentelemetry import propagate

from volte.v1 import common_pb2, state_pb2, state_pb2_grpc

T = TypeVar("T")
TRANSPORTS = {"UDP": common_pb2.SIP_TRANSPORT_UDP, "TCP": common_pb2.SIP_TRANSPORT_TCP}


def transport_enum(name: str) -> common_pb2.SipTransport:
    return TRANSPORTS.get(name, common_pb2.SIP_TRANSPORT_UNSPECIFIED)


class StateUnavailable(Exception):
    """The state store could not answer in time."""


class StateError(Exception):
    """The state store refused the call (a bug on our side: bad argument)."""


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata, so the state span is a child of ours."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


class StateClient:
    def __init__(self, target: str, timeout: float) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = state_pb2_grpc.StateStoreStub(self.channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self.channel.close(None)

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await rpc(request, timeout=self.timeout, metadata=trace_metadata())
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise StateUnavailable(exc.details() or code.name) from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise LookupError(exc.details()) from None
            raise StateError(f"{code.name}: {exc.details()}") from None

    async def register(self, request: state_pb2.RegisterRequest) -> state_pb2.RegisterResponse:
        return await self._call(self.stub.Register, request)

    async def route(self, request: state_pb2.RouteRequest) -> state_pb2.RouteResponse:
        return await self._call(self.stub.Route, request)

    async def lookup(self, impu: str) -> state_pb2.LookupBindingsResponse:
        return await self._call(
            self.stub.LookupBindings, state_pb2.LookupBindingsRequest(impu=impu)
        )

    async def put_dialog(self, request: state_pb2.PutDialogRequest) -> state_pb2.Dialog:
        return await self._call(self.stub.PutDialog, request)

    async def delete_dialog(
        self, request: state_pb2.DeleteDialogRequest
    ) -> state_pb2.DeleteDialogResponse:
        return await self._call(self.stub.DeleteDialog, request)
