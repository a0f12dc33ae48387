"""The sbc's side of media anchoring: SDP in, relay addresses out, SDP rewritten.

The relay never sees SDP: the sbc parses each body (services.sip.sdp), hands the streams to
MediaControl and rewrites the body with the relay's addresses (anchor). Failures of the relay
become `MediaUnavailable` (the sbc answers 503), bad SDP a ParseError with status 488.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.sbc.state_client import trace_metadata
from services.sip.sdp import RelayEndpoint, TransportAddress, anchor, parse_sdp, streams
from volte.v1 import common_pb2, media_pb2, media_pb2_grpc

T = TypeVar("T")
CALLER = media_pb2.LEG_CALLER
CALLEE = media_pb2.LEG_CALLEE
OFFER = media_pb2.UpdateSessionRequest.KIND_OFFER
ANSWER = media_pb2.UpdateSessionRequest.KIND_ANSWER


class MediaUnavailable(Exception):
    """The media relay could not anchor the call."""


class MediaClient:
    def __init__(self, target: str, timeout: float) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = media_pb2_grpc.MediaControlStub(self.channel)
        self.timeout = timeout

    async def close(self) -> None:
        await self.channel.close(None)

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await rpc(request, timeout=self.timeout, metadata=trace_metadata())
        except grpc.aio.AioRpcError as exc:
            raise MediaUnavailable(f"{exc.code().name}: {exc.details()}") from None

    async def create(self, call_id: str, from_tag: str) -> str:
        reply = await self._call(
            self.stub.CreateSession,
            media_pb2.CreateSessionRequest(
                dialog=common_pb2.DialogId(call_id=call_id, from_tag=from_tag)
            ),
        )
        return str(reply.session_id)

    async def anchor(
        self, session_id: str, body: bytes, kind: media_pb2.UpdateSessionRequest.Kind,
        leg: media_pb2.Leg,
    ) -> bytes:
        """The SDP `body` from `leg`, rewritten to name the relay (ParseError 488 if bad)."""
        desc = parse_sdp(body)
        request = media_pb2.UpdateSessionRequest(session_id=session_id, kind=kind, from_leg=leg)
        for stream in streams(desc):
            request.streams.append(
                media_pb2.MediaStream(
                    index=stream.index,
                    media=stream.media,
                    rtp=common_pb2.SocketAddress(ip=stream.rtp.ip, port=stream.rtp.port),
                    rtcp=common_pb2.SocketAddress(ip=stream.rtcp.ip, port=stream.rtcp.port),
                    rtcp_mux=stream.rtcp_mux,
                    payload_types=list(stream.payload_types),
                    disabled=stream.disabled,
                    clock_rates=stream.clock_rates,
                )
            )
        reply = await self._call(self.stub.UpdateSession, request)
        relays = [
            RelayEndpoint(
                r.index,
                TransportAddress(r.rtp.ip, r.rtp.port),
                TransportAddress(r.rtcp.ip, r.rtcp.port),
            )
            for r in reply.streams
        ]
        return anchor(desc, relays).serialize()

    async def delete(self, session_id: str) -> None:
        await self._call(
            self.stub.DeleteSession, media_pb2.DeleteSessionRequest(session_id=session_id)
        )

    async def events(self) -> AsyncIterator[media_pb2.MediaEvent]:
        """Every event of the relay instance (latching, timeouts), as they happen."""
        call = self.stub.WatchEvents(media_pb2.WatchMediaEventsRequest())
        async for event in call:
            yield event
