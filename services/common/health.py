"""Standard gRPC health checking (grpc.health.v1) on a service's grpc.aio server.

Kubernetes gRPC probes and clients ask `Check`/`Watch`; a service reports NOT_SERVING until it
is ready and again while it drains, so traffic moves away before the process stops.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# grpc-stubs predates the asyncio servicer, so mypy sees this module as Any.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

# The empty name is the server's overall health, which probes ask for by default.
OVERALL = ""


class HealthReporter:
    """Serving status of one server: its overall status and each named service, together."""

    def __init__(self, servicer: health_aio.HealthServicer, services: Iterable[str]) -> None:
        self._servicer = servicer
        self.services = (OVERALL, *services)

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in self.services:
            await self._servicer.set(name, status)

    async def serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def shutdown(self) -> None:
        """NOT_SERVING for good: later calls to serving() are ignored."""
        await self._servicer.enter_graceful_shutdown()


async def add_health(server: grpc.aio.Server, services: Iterable[str] = ()) -> HealthReporter:
    """Serve grpc.health.v1.Health on `server`, reporting NOT_SERVING until `serving()`.

    `services` are full gRPC service names, e.g. "volte.v1.StateStore".
    """
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reporter = HealthReporter(servicer, services)
    await reporter.not_serving()
    return reporter
