"""The gRPC shell: volte.v1.StateStore over a RedisStore, its health, sweeper and drain."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import redis.exceptions as redis_errors
from opentelemetry import metrics, propagate, trace

from services.common.config import option
from services.common.health import HealthReporter, add_health
from services.common.telemetry import setup_telemetry
from services.state.connect import check_url, client_name
from services.state.rules import Conflict, InvalidArgument
from services.state.store import EARLY_DIALOG_TIMEOUT, RedisStore
from volte.v1 import state_pb2, state_pb2_grpc

log = logging.getLogger("volte.state")
SERVICE_NAME = state_pb2.DESCRIPTOR.services_by_name["StateStore"].full_name
DRAIN_GRACE = 5.0

# Redis is down, failing over, or read-only after a failover: retry elsewhere or later.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    TimeoutError,
    OSError,
)
BACKEND_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, redis_errors.RedisError)


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}")
    return level


def redis_url(text: str) -> str:
    """A Redis URL option, checked as connect() will read it."""
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    grpc_listen: str = option("127.0.0.1:50051", "host:port the gRPC API listens on")
    redis: str = option(
        "redis://127.0.0.1:6379/0",
        "Redis URL: redis://host:port/db, rediss://, unix://path, "
        "redis+sentinel://h1:p1,h2:p2/service[/db], redis+cluster://host:port",
        parse=redis_url,
    )
    redis_timeout: float = option(0.5, "seconds to connect to Redis and for each reply")
    metrics_port: int = option(0, "Prometheus /metrics port (0: off)")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR", parse=_log_level)
    instance_id: str = option(f"{socket.gethostname()}-{os.getpid()}", "name of this instance")
    sweep_interval: float = option(0.5, "seconds between timer sweeps")
    early_dialog_timeout: float = option(
        EARLY_DIALOG_TIMEOUT, "seconds before an EARLY dialog is stale"
    )


class NotFound(LookupError):
    pass


class Throttled:
    """Logs the first of a burst of like warnings, then at most one per `period` seconds with
    the number left out: an outage at 1000 RPC/s is not 1000 log lines a second."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self._last = -period
        self._suppressed = 0

    def warning(self, message: str, **extra: object) -> None:
        now = time.monotonic()
        if now - self._last < self.period:
            self._suppressed += 1
            return
        log.warning(message, extra={**extra, "suppressed": self._suppressed})
        self._last, self._suppressed = now, 0


tracer = trace.get_tracer("volte.state")


async def redis_problem(store: RedisStore, timeout: float) -> str:
    """Why Redis does not answer a PING within `timeout` seconds; "" when it does (the state
    service's health and the sbc's readiness with --state-redis)."""
    try:
        async with asyncio.timeout(timeout):
            await store.ping()
    except BACKEND_ERRORS as exc:
        return str(exc) or type(exc).__name__
    return ""


def failure_status(method: str, exc: Exception, unavailable: Throttled) -> tuple[str, str]:
    """The gRPC status name and message for an operation that raised `exc`, logged once
    (an outage throttled, a bug with its traceback). The servicer aborts with it; the sbc's
    in-process client raises what its gRPC client would raise for it."""
    if isinstance(exc, InvalidArgument):
        return "INVALID_ARGUMENT", str(exc)
    if isinstance(exc, NotFound):
        return "NOT_FOUND", str(exc)
    if isinstance(exc, Conflict):
        return "ALREADY_EXISTS", str(exc)
    if isinstance(exc, UNAVAILABLE_ERRORS):
        message = f"state store: Redis unavailable ({str(exc) or type(exc).__name__})"
        unavailable.warning(message, rpc=method)
        return "UNAVAILABLE", message
    if isinstance(exc, redis_errors.RedisError):
        message = f"state store: Redis error ({exc})"
        log.error(message, extra={"rpc": method}, exc_info=exc)
        return "INTERNAL", message
    # A bug: INTERNAL rather than UNKNOWN, logged once with its traceback.
    log.error("%s failed", method, extra={"rpc": method}, exc_info=exc)
    return "INTERNAL", f"state store: {type(exc).__name__}"


class StateApi:
    """Each StateStore RPC as request -> response on a RedisStore, without gRPC: the servicer
    serves these over gRPC, and the sbc runs them in-process (`--state-redis`)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    async def GetSubscriber(self, request: state_pb2.GetSubscriberRequest) -> state_pb2.Subscriber:
        sub = await self.store.get_subscriber(impi=request.impi, impu=request.impu)
        if sub is None:
            raise NotFound(f"no subscriber {request.impi or request.impu}")
        return sub

    async def PutSubscriber(self, request: state_pb2.PutSubscriberRequest) -> state_pb2.Subscriber:
        sub = state_pb2.Subscriber()
        sub.CopyFrom(request.subscriber)
        return await self.store.put_subscriber(sub)

    async def ListSubscribers(
        self, request: state_pb2.ListSubscribersRequest
    ) -> state_pb2.ListSubscribersResponse:
        subs = await self.store.list_subscribers(request.after_impi, request.limit)
        return state_pb2.ListSubscribersResponse(subscribers=subs)

    async def DeleteSubscriber(
        self, request: state_pb2.DeleteSubscriberRequest
    ) -> state_pb2.DeleteSubscriberResponse:
        deleted, removed = await self.store.delete_subscriber(request.impi)
        return state_pb2.DeleteSubscriberResponse(deleted=deleted, bindings_removed=removed)

    async def Register(self, request: state_pb2.RegisterRequest) -> state_pb2.RegisterResponse:
        return await self.store.register(request)

    async def Route(self, request: state_pb2.RouteRequest) -> state_pb2.RouteResponse:
        return await self.store.route(request)

    async def SaveBinding(
        self, request: state_pb2.SaveBindingRequest
    ) -> state_pb2.SaveBindingResponse:
        return state_pb2.SaveBindingResponse(bindings=await self.store.save_binding(request))

    async def LookupBindings(
        self, request: state_pb2.LookupBindingsRequest
    ) -> state_pb2.LookupBindingsResponse:
        bindings = await self.store.lookup_bindings(request.impu)
        return state_pb2.LookupBindingsResponse(bindings=bindings)

    async def RemoveBinding(
        self, request: state_pb2.RemoveBindingRequest
    ) -> state_pb2.RemoveBindingResponse:
        removed = await self.store.remove_binding(request.impu, request.contact_uri)
        return state_pb2.RemoveBindingResponse(removed=removed)

    async def PutDialog(self, request: state_pb2.PutDialogRequest) -> state_pb2.Dialog:
        return await self.store.put_dialog(request.dialog, request.ttl)

    async def GetDialog(self, request: state_pb2.GetDialogRequest) -> state_pb2.Dialog:
        dialog = await self.store.get_dialog(request.id)
        if dialog is None:
            raise NotFound(f"no dialog with Call-ID {request.id.call_id} and these tags")
        return dialog

    async def DeleteDialog(
        self, request: state_pb2.DeleteDialogRequest
    ) -> state_pb2.DeleteDialogResponse:
        deleted = await self.store.delete_dialog(request.id)
        return state_pb2.DeleteDialogResponse(
            deleted=bool(deleted), bearer_ids=[b for d in deleted for b in d.bearer_ids])

    async def PutMediaSession(
        self, request: state_pb2.PutMediaSessionRequest
    ) -> state_pb2.MediaSessionRecord:
        return await self.store.put_media_session(request.session, request.ttl)

    async def GetMediaSession(
        self, request: state_pb2.GetMediaSessionRequest
    ) -> state_pb2.MediaSessionRecord:
        session = await self.store.get_media_session(request.session_id)
        if session is None:
            raise NotFound(f"no media session {request.session_id}")
        return session

    async def DeleteMediaSession(
        self, request: state_pb2.DeleteMediaSessionRequest
    ) -> state_pb2.DeleteMediaSessionResponse:
        deleted = await self.store.delete_media_session(request.session_id)
        return state_pb2.DeleteMediaSessionResponse(deleted=deleted)


class StateServicer(state_pb2_grpc.StateStoreServicer):
    """Each RPC: StateApi's method within `deadline` seconds, failures mapped to status codes
    (logging each once), counted."""

    def __init__(
        self, store: RedisStore, *, deadline: float = 1.0, meter: metrics.Meter | None = None
    ) -> None:
        self.store = store
        self.api = StateApi(store)
        self.deadline = deadline
        meter = meter or metrics.get_meter("volte.state")
        self._rpcs = meter.create_counter(
            "volte_state_rpcs", unit="{rpc}", description="StateStore RPCs by method and result"
        )
        self._unavailable = Throttled()

    async def _call(self, method: str, request: Any, context: Any) -> Any:
        budget = self.deadline
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        code, message = "OK", ""
        # A child of the caller's span (the sbc's SIP transaction): W3C trace context comes
        # in the gRPC metadata.
        parent = propagate.extract(dict(context.invocation_metadata() or ()))
        span = tracer.start_span(f"StateStore/{method}", context=parent)
        try:
            async with asyncio.timeout(budget):
                with trace.use_span(span, end_on_exit=True):
                    result = await getattr(self.api, method)(request)
        except Exception as exc:
            code, message = failure_status(method, exc, self._unavailable)
        self._rpcs.add(1, {"method": method, "code": code})
        if code != "OK":
            log.debug("rpc failed", extra={"rpc": method, "code": code, "detail": message})
            await context.abort(grpc.StatusCode[code], message)
        return result


def _rpc(method: str) -> Callable[[StateServicer, Any, Any], Awaitable[Any]]:
    async def handler(self: StateServicer, request: Any, context: Any) -> Any:
        return await self._call(method, request, context)

    handler.__name__ = handler.__qualname__ = method
    return handler


# Every RPC of the service is StateApi's method of the same name, served through _call.
for _method in state_pb2.DESCRIPTOR.services_by_name["StateStore"].methods_by_name:
    setattr(StateServicer, _method, _rpc(_method))


class StateServer:
    """A grpc.aio server with the servicer and health, plus two background tasks: the health
    check (SERVING while Redis answers PING) and the timer sweeper."""

    def __init__(
        self,
        store: RedisStore,
        *,
        listen: str = "127.0.0.1:0",
        sweep_interval: float = 0.5,
        health_interval: float = 0.5,
        deadline: float = 1.0,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.store = store
        self.listen = listen
        self.sweep_interval = sweep_interval
        self.health_interval = health_interval
        self.deadline = deadline
        meter = meter or metrics.get_meter("volte.state")
        self.servicer = StateServicer(store, deadline=deadline, meter=meter)
        self._fired = meter.create_counter(
            "volte_state_timers_fired", unit="{record}", description="records expired by timers"
        )
        self._server: grpc.aio.Server | None = None
        self._health: HealthReporter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.port = 0

    async def start(self) -> int:
        """Listens and starts the background tasks; answers the bound port."""
        server = grpc.aio.server()
        state_pb2_grpc.add_StateStoreServicer_to_server(self.servicer, server)
        self._health = await add_health(server, [SERVICE_NAME])
        self.port = server.add_insecure_port(self.listen)
        await server.start()
        self._server = server
        self._tasks = [
            asyncio.create_task(self._check_health(self._health), name="state-health"),
            asyncio.create_task(self._sweep_timers(), name="state-sweeper"),
        ]
        return self.port

    async def stop(self, grace: float = DRAIN_GRACE) -> None:
        """Drain: NOT_SERVING for good, refuse new RPCs, let running ones end within `grace`."""
        if self._health is not None:
            await self._health.shutdown()
        # The flag as well as cancel(): redis-py can absorb a cancellation that arrives
        # mid-command (seen on Python 3.11), and the loops must end regardless.
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.stop(grace)

    async def _check_health(self, health: HealthReporter) -> None:
        up: bool | None = None
        while not self._stopping:
            error = await redis_problem(self.store, self.deadline)
            ok = not error
            if ok != up:
                if ok:
                    log.info("Redis reachable: SERVING")
                    await health.serving()
                else:
                    log.warning("Redis unreachable: NOT_SERVING (%s)", error)
                    await health.not_serving()
                up = ok
            await asyncio.sleep(self.health_interval)

    async def _sweep_timers(self) -> None:
        failing = False
        while not self._stopping:
            try:
                async with asyncio.timeout(max(self.deadline, 2 * self.sweep_interval)):
                    fired = await self.store.sweep()
                for kind, count in fired.items():
                    if count:
                        self._fired.add(count, {"kind": kind})
                if failing:
                    log.info("timer sweeps resumed")
                failing = False
            except BACKEND_ERRORS as exc:
                if not failing:  # once per outage, not every half second
                    log.warning("timer sweep failed: %s", str(exc) or type(exc).__name__)
                failing = True
            await asyncio.sleep(self.sweep_interval)


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


async def serve(config: StateConfig, *, stop: asyncio.Event | None = None) -> int:
    """Runs the service until SIGTERM/SIGINT (or `stop`), then drains; the exit status."""
    telemetry = setup_telemetry("state", metrics_port=config.metrics_port)
    meter = telemetry.meter_provider.get_meter("volte.state")
    store = RedisStore.from_url(
        config.redis,
        timeout=config.redis_timeout,
        client_name=client_name("state", config.instance_id),
        early_dialog_timeout=config.early_dialog_timeout,
    )
    server = StateServer(
        store,
        listen=config.grpc_listen,
        sweep_interval=config.sweep_interval,
        deadline=max(1.0, 2 * config.redis_timeout),
        meter=meter,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context = {"instance": config.instance_id, "redis": redact(config.redis)}
    try:
        try:
            port = await server.start()
        except RuntimeError as exc:  # grpc cannot bind
            log.error("cannot listen on %s: %s", config.grpc_listen, exc, extra=context)
            return 1
        log.info("state service listening on port %d", port, extra=context)
        await stop.wait()
        log.info("draining", extra=context)
        await server.stop(DRAIN_GRACE)
        log.info("stopped", extra=context)
        return 0
    finally:
        await store.close()
        telemetry.shutdown()
