"""The sbc's side of VoLTE bearers: QCI-1 dedicated bearers for both UEs of an answered call.

The eNB agent (BearerControl) sends S1AP E-RAB Setup to the UE's eNodeB and answers when the
eNB did. A bearer that cannot be set up is `BearerUnavailable` (the call goes on best-effort
by default: logged and counted).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import grpc

from services.sbc.state_client import trace_metadata
from volte.v1 import bearer_pb2, bearer_pb2_grpc, common_pb2

# G.711 at 20 ms on the radio side: 64 kbit/s of payload, the agent adds the overheads.
CODEC_BPS = 64_000
PTIME_MS = 20
QCI_CONVERSATIONAL_VOICE = 1
# No retry policy is configured, so gRPC's retry machinery (which buffers every call's messages)
# only costs CPU: about a quarter of a unary call's client side here.
CHANNEL_OPTIONS = (("grpc.enable_retries", 0),)
# A UE the agent knows at no eNB (NOT_FOUND) is not asked for again this long: a UE attaches
# before it registers with IMS, so one that is not attached now stays so for a while (SIPp
# and other test UEs never attach), and every call would otherwise cost the agent an RPC.
NOT_ATTACHED_SECONDS = 10.0


class BearerUnavailable(Exception):
    """No bearer: the agent or the eNB refused, or did not answer in time."""


class NotAttached(BearerUnavailable):
    """No bearer because the UE is attached at no eNB the agent serves (a plain SIP UE)."""


class BearerClient:
    def __init__(self, target: str, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = bearer_pb2_grpc.BearerControlStub(self.channel)
        self.timeout = timeout
        self.clock = clock
        self.not_attached: dict[str, tuple[float, str]] = {}  # IMSI -> (until, why)

    async def close(self) -> None:
        await self.channel.close(None)

    async def setup(self, imsi: str, dialog: common_pb2.DialogId) -> str:
        """A QCI-1 bearer for the UE with `imsi`; returns its id."""
        request = bearer_pb2.SetupBearerRequest(
            imsi=imsi,
            dialog=dialog,
            qos=bearer_pb2.BearerQos(qci=QCI_CONVERSATIONAL_VOICE),
            codec_bps=CODEC_BPS,
            ptime_ms=PTIME_MS,
        )
        why = self.remembered_not_attached(imsi)
        if why is not None:
            raise NotAttached(why)
        try:
            reply = await self.stub.SetupBearer(
                request, timeout=self.timeout, metadata=trace_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._not_attached(imsi, why)
                raise NotAttached(why) from None
            raise BearerUnavailable(why) from None
        self.not_attached.pop(imsi, None)
        return str(reply.bearer.bearer_id)

    def remembered_not_attached(self, imsi: str) -> str | None:
        """Why the UE had no bearer when last asked, if that was NOT_FOUND a short while
        ago (it is not asked again until NOT_ATTACHED_SECONDS have passed)."""
        known = self.not_attached.get(imsi)
        return known[1] if known is not None and known[0] > self.clock() else None

    def _not_attached(self, imsi: str, why: str) -> None:
        now = self.clock()
        if len(self.not_attached) > 10_000:  # bounded: drop what has run out
            self.not_attached = {k: v for k, v in self.not_attached.items() if v[0] > now}
        self.not_attached[imsi] = (now + NOT_ATTACHED_SECONDS,
                                   f"{why} (not asked again for {NOT_ATTACHED_SECONDS:.0f} s)")

    async def release(self, bearer_id: str, cause: str = "") -> None:
        try:
            await self.stub.ReleaseBearer(
                bearer_pb2.ReleaseBearerRequest(bearer_id=bearer_id, cause=cause),
                timeout=self.timeout,
                metadata=trace_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise BearerUnavailable(f"{exc.code().name}: {exc.details()}") from None

    async def events(self) -> AsyncIterator[bearer_pb2.BearerEvent]:
        async for event in self.stub.WatchEvents(bearer_pb2.WatchBearerEventsRequest()):
            yield event
