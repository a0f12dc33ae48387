"""The sbc's side of the state store, over gRPC or in-process, with deadlines and one failure
type.

`GrpcStateClient` calls the state service (`--state host:port`). `DirectStateClient`
(`--state-redis URL`) runs the same operations (services.state.service.StateApi: the store's
keys, Lua scripts and timers) in the sbc against Redis: one Redis round trip per SIP
transaction instead of a gRPC hop and the state service's own Redis round trip. Both answer
alike: a store that does not answer in time, or is unreachable, is `StateUnavailable`, which
the sbc answers with 503 — never a hang.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace

from services.common.telemetry import current_span
from services.state.connect import client_name
from services.state.resp import LeanRedis, operation_deadline
from services.state.service import StateApi, Throttled, failure_status, redis_problem
from services.state.store import RedisStore
from volte.v1 import common_pb2, state_pb2, state_pb2_grpc

TRANSPORTS = {"UDP": common_pb2.SIP_TRANSPORT_UDP, "TCP": common_pb2.SIP_TRANSPORT_TCP}
tracer = trace.get_tracer("volte.sbc.state")


def transport_enum(name: str) -> common_pb2.SipTransport:
    return TRANSPORTS.get(name, common_pb2.SIP_TRANSPORT_UNSPECIFIED)


class StateUnavailable(Exception):
    """The state store could not answer in time."""


class StateError(Exception):
    """The state store refused the call (a bug on our side: bad argument)."""


def failure(code: str, details: str) -> Exception:
    """What a failed state operation raises, by its gRPC status name, whichever the client."""
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return StateUnavailable(details or code)
    if code == "NOT_FOUND":
        return LookupError(details)
    return StateError(f"{code}: {details}")


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata, so the state span is a child of ours."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


class StateClient:
    """The operations the sbc needs, each one state call (`_invoke`: the RPC's name and
    request, its response or one of the exceptions above)."""

    async def _invoke(self, method: str, request: Any) -> Any:
        raise NotImplementedError

    async def serving(self) -> bool:
        """Whether the store answers now (the sbc's readiness)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def register(self, request: state_pb2.RegisterRequest) -> state_pb2.RegisterResponse:
        response: state_pb2.RegisterResponse = await self._invoke("Register", request)
        return response

    async def route(self, request: state_pb2.RouteRequest) -> state_pb2.RouteResponse:
        response: state_pb2.RouteResponse = await self._invoke("Route", request)
        return response

    async def lookup(self, impu: str) -> state_pb2.LookupBindingsResponse:
        request = state_pb2.LookupBindingsRequest(impu=impu)
        response: state_pb2.LookupBindingsResponse = await self._invoke("LookupBindings", request)
        return response

    async def put_dialog(self, request: state_pb2.PutDialogRequest) -> state_pb2.Dialog:
        response: state_pb2.Dialog = await self._invoke("PutDialog", request)
        return response

    async def delete_dialog(
        self, request: state_pb2.DeleteDialogRequest
    ) -> state_pb2.DeleteDialogResponse:
        response: state_pb2.DeleteDialogResponse = await self._invoke("DeleteDialog", request)
        return response


class GrpcStateClient(StateClient):
    """Through the state service's gRPC API."""

    def __init__(self, target: str, timeout: float) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = state_pb2_grpc.StateStoreStub(self.channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self.channel.close(None)

    async def serving(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _invoke(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self.stub, method)(
                request, timeout=self.timeout, metadata=trace_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise failure(exc.code().name, exc.details() or "") from None


class DirectStateClient(StateClient):
    """The state service's operations run here, on Redis (the state service still runs the
    timers and serves everyone else)."""

    def __init__(self, store: RedisStore, timeout: float) -> None:
        self.store = store
        self.api = StateApi(store)
        self.timeout = timeout
        self._unavailable = Throttled()
        # LeanRedis fails the commands of an operation past its deadline by itself (a
        # context variable is cheaper than an asyncio.timeout); redis-py bounds each reply
        # only, not the operation.
        self._lean = isinstance(store.redis, LeanRedis)

    @classmethod
    def from_url(cls, url: str, timeout: float, instance: str) -> DirectStateClient:
        # Each Redis reply gets half the budget, so a dead connection fails in time for
        # the 503 rather than at the deadline.
        store = RedisStore.from_url(
            url, timeout=timeout / 2, client_name=client_name("sbc", instance), lean=True
        )
        return cls(store, timeout)

    async def close(self) -> None:
        await self.store.close()

    async def serving(self) -> bool:
        return not await redis_problem(self.store, 1.0)

    async def _invoke(self, method: str, request: Any) -> Any:
        if not trace.get_current_span().is_recording():  # a trace not sampled: no child span
            return await self._run(method, request)
        with current_span(tracer, f"StateStore/{method}"):
            return await self._run(method, request)

    async def _run(self, method: str, request: Any) -> Any:
        try:
            if not self._lean:
                async with asyncio.timeout(self.timeout):
                    return await getattr(self.api, method)(request)
            deadline = asyncio.get_running_loop().time() + self.timeout
            token = operation_deadline.set(deadline)
            try:
                return await getattr(self.api, method)(request)
            finally:
                operation_deadline.reset(token)
        except Exception as exc:
            raise failure(*failure_status(method, exc, self._unavailable)) from None
