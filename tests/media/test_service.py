"""The media service in-process: the real gRPC server on loopback, real UDP sockets as the two
UAs. Each test starts its own server with its own port range."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.media.config import MediaConfig
from services.media.service import MediaServer
from tests.media.helpers import Ua, free_udp_range
from tests.media.packets import rtcp_rr, rtp
from volte.v1 import common_pb2, media_pb2, media_pb2_grpc

OFFER = media_pb2.UpdateSessionRequest.KIND_OFFER
ANSWER = media_pb2.UpdateSessionRequest.KIND_ANSWER
CALLER, CALLEE = media_pb2.LEG_CALLER, media_pb2.LEG_CALLEE
Kind = media_pb2.MediaEvent
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Media:
    server: MediaServer
    stub: media_pb2_grpc.MediaControlStub
    health: health_pb2_grpc.HealthStub
    reader: InMemoryMetricReader
    low: int
    high: int

    async def session(self) -> str:
        reply = await self.stub.CreateSession(media_pb2.CreateSessionRequest(
            dialog=common_pb2.DialogId(call_id="c1@test", from_tag="a"), labels={"test": "1"},
        ))
        return str(reply.session_id)

    async def update(self, session_id: str, kind: Any, leg: Any,
                     *streams: media_pb2.MediaStream) -> list[media_pb2.RelayStream]:
        reply = await self.stub.UpdateSession(media_pb2.UpdateSessionRequest(
            session_id=session_id, kind=kind, from_leg=leg, streams=streams,
        ))
        return list(reply.streams)

    async def stats(self, session_id: str) -> dict[int, media_pb2.StreamStats]:
        reply = await self.stub.QueryStats(media_pb2.QueryStatsRequest(session_id=session_id))
        return {s.leg: s for s in reply.streams if s.index == 0}

    def metric(self, name: str, **attrs: str) -> int:
        data = self.reader.get_metrics_data()
        total = 0
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for p in m.data.data_points:
                            if all((p.attributes or {}).get(k) == v for k, v in attrs.items()):
                                total += int(p.value)  # type: ignore[union-attr]
        return total


async def start_media(ports: int = 40, **options: Any) -> tuple[Media, grpc.aio.Channel]:
    low = free_udp_range(ports)
    config = MediaConfig(grpc_listen="127.0.0.1:0", port_min=low, port_max=low + ports - 1,
                         instance_id="media-test", **options)
    reader = InMemoryMetricReader()
    server = MediaServer(config, meter=MeterProvider(metric_readers=[reader]).get_meter("t"))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    media = Media(server, media_pb2_grpc.MediaControlStub(channel),
                  health_pb2_grpc.HealthStub(channel), reader, low, low + ports - 1)
    return media, channel


@pytest.fixture
async def media() -> AsyncIterator[Media]:
    m, channel = await start_media(timeout=1.0)
    try:
        yield m
    finally:
        await channel.close(None)
        await m.server.stop(grace=0)


@pytest.fixture
async def uas() -> AsyncIterator[tuple[Ua, Ua]]:
    a, b = await Ua.open(), await Ua.open()
    yield a, b
    a.close()
    b.close()


def audio(at: common_pb2.SocketAddress, **kw: Any) -> media_pb2.MediaStream:
    return media_pb2.MediaStream(index=0, media="audio", rtp=at, payload_types=[8, 101],
                                 clock_rates={101: 8000}, **kw)


async def collect(stream: Any, events: list[media_pb2.MediaEvent]) -> None:
    async for event in stream:
        events.append(event)


async def wait_for(events: list[media_pb2.MediaEvent], kind: int, within: float) -> None:
    deadline = time.monotonic() + within
    while not any(e.kind == kind for e in events):
        assert time.monotonic() < deadline, f"no {Kind.Kind.Name(kind)} in {events}"
        await asyncio.sleep(0.02)


async def test_health_serving_once_ports_can_be_bound(media: Media):
    deadline = time.monotonic() + 2
    while (await media.health.Check(health_pb2.HealthCheckRequest())).status != SERVING:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    service = health_pb2.HealthCheckRequest(service="volte.v1.MediaControl")
    assert (await media.health.Check(service)).status == SERVING


async def test_a_call_relays_rtp_and_rtcp_both_ways(media: Media, uas: tuple[Ua, Ua]):
    a, b = uas
    b_rtcp = await Ua.open()
    session_id = await media.session()
    events: list[media_pb2.MediaEvent] = []
    watch = media.stub.WatchEvents(media_pb2.WatchMediaEventsRequest(session_id=session_id))
    watcher = asyncio.create_task(collect(watch, events))

    # A's SDP names a port it does not send from (as behind a NAT): the relay must latch.
    a_claims = common_pb2.SocketAddress(ip="127.0.0.1", port=9)
    [to_b] = await media.update(session_id, OFFER, CALLER, audio(a_claims))
    [to_a] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp, rtcp=b_rtcp.sdp))
    for relay in (to_a, to_b):
        assert relay.rtp.ip == "127.0.0.1" and relay.rtcp.ip == "127.0.0.1"
        assert media.low <= relay.rtp.port < media.high and relay.rtp.port % 2 == 0
        assert relay.rtcp.port == relay.rtp.port + 1
    assert to_a.rtp.port != to_b.rtp.port

    # A speaks first, so the relay knows where A really is; then 50 packets each way, 20 ms
    # apart, as G.711 does.
    count = 50
    a.send(rtp(0, 0, ssrc=0xA, pt=8, payload=b"A" * 160), to_a.rtp)
    first, source = await b.recv()
    assert first == rtp(0, 0, ssrc=0xA, pt=8, payload=b"A" * 160)
    assert source == (to_b.rtp.ip, to_b.rtp.port)  # B hears the relay from where it sends to
    start = time.monotonic()
    for seq in range(1, count + 1):
        a.send(rtp(seq, seq * 160, ssrc=0xA, pt=8, payload=bytes([seq]) * 160), to_a.rtp)
        b.send(rtp(seq, seq * 160, ssrc=0xB, pt=8, payload=bytes([seq + 100]) * 160), to_b.rtp)
        await asyncio.sleep(max(0.0, start + seq * 0.020 - time.monotonic()))
    at_b = await b.recv_n(count)
    at_a = await a.recv_n(count)
    assert [d for d, _ in at_b] == [
        rtp(s, s * 160, ssrc=0xA, pt=8, payload=bytes([s]) * 160) for s in range(1, count + 1)
    ]
    assert [d for d, _ in at_a] == [
        rtp(s, s * 160, ssrc=0xB, pt=8, payload=bytes([s + 100]) * 160)
        for s in range(1, count + 1)
    ]
    assert {src for _, src in at_a} == {(to_a.rtp.ip, to_a.rtp.port)}

    # RTCP on the RTCP ports, to B's a=rtcp address.
    a.send(rtcp_rr(0xA), to_a.rtcp)
    data, source = await b_rtcp.recv()
    assert data == rtcp_rr(0xA) and source == (to_b.rtcp.ip, to_b.rtcp.port)

    stats = await media.stats(session_id)
    sent_by_a, sent_by_b = stats[CALLER], stats[CALLEE]
    assert (sent_by_a.rtp_packets, sent_by_a.rtp_bytes) == (count + 1, (count + 1) * 172)
    assert (sent_by_b.rtp_packets, sent_by_b.rtp_bytes) == (count, count * 172)
    assert sent_by_a.rtcp_packets == 1
    assert sent_by_a.packets_lost == sent_by_b.packets_lost == 0
    # Loopback adds next to nothing; the bound leaves room for a busy shared machine.
    assert sent_by_a.jitter_us < 25_000 and sent_by_b.jitter_us < 25_000, stats
    print(f"jitter on loopback: A->relay {sent_by_a.jitter_us} µs, "
          f"B->relay {sent_by_b.jitter_us} µs")
    assert (sent_by_a.latched_source.ip, sent_by_a.latched_source.port) == a.address
    assert (sent_by_b.latched_source.ip, sent_by_b.latched_source.port) == b.address
    assert sent_by_a.last_packet_at.ToSeconds() >= int(time.time()) - 5

    latched = [e for e in events if e.kind == Kind.KIND_LATCHED]
    assert {(e.leg, e.detail) for e in latched} == {
        (CALLER, f"127.0.0.1:{a.address[1]}"), (CALLEE, f"127.0.0.1:{b.address[1]}"),
    }
    assert all(e.session_id == session_id and e.at.seconds > 0 for e in latched)
    assert media.metric("volte_media_packets_relayed", kind="rtp") == 2 * count + 1
    assert media.metric("volte_media_sessions_active") == 1

    # Delete: the final stats, the event, and the watch stream ends.
    final = await media.stub.DeleteSession(media_pb2.DeleteSessionRequest(session_id=session_id))
    assert {s.leg: s.rtp_packets for s in final.final_stats.streams} == {
        CALLER: count + 1, CALLEE: count,
    }
    await asyncio.wait_for(watcher, 2)
    assert events[-1].kind == Kind.KIND_SESSION_DELETED
    b_rtcp.close()


async def test_reoffer_keeps_ports_and_delete_frees_them(media: Media, uas: tuple[Ua, Ua]):
    a, b = uas
    session_id = await media.session()
    [to_b] = await media.update(session_id, OFFER, CALLER, audio(a.sdp))
    [to_a] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp))
    assert await media.update(session_id, OFFER, CALLER, audio(a.sdp)) == [to_b]
    assert await media.update(session_id, ANSWER, CALLEE, audio(b.sdp)) == [to_a]
    # A re-INVITE from B (B offers): the A-facing ports again.
    assert await media.update(session_id, OFFER, CALLEE, audio(b.sdp)) == [to_a]
    ports = [to_a.rtp.port, to_a.rtcp.port, to_b.rtp.port, to_b.rtcp.port]

    await media.stub.DeleteSession(media_pb2.DeleteSessionRequest(session_id=session_id))
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))  # free again
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await media.stats(session_id)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rtcp_mux_stream_uses_one_port(media: Media, uas: tuple[Ua, Ua]):
    a, b = uas
    session_id = await media.session()
    [to_b] = await media.update(session_id, OFFER, CALLER, audio(a.sdp, rtcp_mux=True))
    [to_a] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp, rtcp_mux=True))
    assert to_a.rtcp == to_a.rtp and to_b.rtcp == to_b.rtp
    assert len(media.server.pool) == 2
    a.send(rtp(1, 160), to_a.rtp)
    a.send(rtcp_rr(), to_a.rtp)
    assert [d for d, _ in await b.recv_n(2)] == [rtp(1, 160), rtcp_rr()]
    stats = await media.stats(session_id)
    assert (stats[CALLER].rtp_packets, stats[CALLER].rtcp_packets) == (1, 1)


async def test_disabled_stream_frees_its_ports(media: Media, uas: tuple[Ua, Ua]):
    a, b = uas
    session_id = await media.session()
    video = media_pb2.MediaStream(index=1, media="video", rtp=common_pb2.SocketAddress(
        ip="127.0.0.1", port=a.address[1] + 2))
    await media.update(session_id, OFFER, CALLER, audio(a.sdp), video)
    assert len(media.server.pool) == 4
    rejected = media_pb2.MediaStream(index=1, media="video", disabled=True)
    [_, off] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp), rejected)
    assert off.rtp.port == 0
    assert len(media.server.pool) == 4  # audio's A-facing pair replaced video's B-facing one


async def test_media_timeout_arrives_over_watch_events(media: Media, uas: tuple[Ua, Ua]):
    a, b = uas
    session_id = await media.session()
    events: list[media_pb2.MediaEvent] = []
    watcher = asyncio.create_task(collect(media.stub.WatchEvents(
        media_pb2.WatchMediaEventsRequest()), events))  # all sessions
    await media.update(session_id, OFFER, CALLER, audio(a.sdp))
    [to_a] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp))
    a.send(rtp(1, 160), to_a.rtp)
    started = time.monotonic()
    await wait_for(events, Kind.KIND_MEDIA_TIMEOUT, within=3.0)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3.0, elapsed  # timeout 1 s, ticks every 0.25 s
    timeouts = [e for e in events if e.kind == Kind.KIND_MEDIA_TIMEOUT]
    assert [e.session_id for e in timeouts] == [session_id]
    await asyncio.sleep(1.5)  # once per session
    assert len([e for e in events if e.kind == Kind.KIND_MEDIA_TIMEOUT]) == 1
    watcher.cancel()


async def test_malformed_packets_are_dropped_and_counted(media: Media, uas: tuple[Ua, Ua]):
    a, b = uas
    session_id = await media.session()
    [_to_b] = await media.update(session_id, OFFER, CALLER, audio(a.sdp))
    [to_a] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp))
    # Too short, RTP version 1, a STUN binding request (version 0); asyncio does not send
    # empty datagrams, so that one goes through a plain socket.
    junk = [b"\x80\x00", b"\x40" + rtp(1)[1:], b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42"
            + b"\x00" * 12]
    for data in junk:
        a.send(data, to_a.rtp)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        plain.sendto(b"", (to_a.rtp.ip, to_a.rtp.port))
    junk.append(b"")
    a.send(b"\x80", to_a.rtcp)
    a.send(rtp(1, 160), to_a.rtp)  # still relayed afterwards
    data, _ = await b.recv()
    assert data == rtp(1, 160)
    await asyncio.sleep(0.05)
    assert b.pending() == 0
    stats = await media.stats(session_id)
    assert stats[CALLER].malformed_packets == len(junk) + 1
    assert stats[CALLER].rtp_packets == 1
    assert media.metric("volte_media_packets_dropped", reason="malformed") == len(junk) + 1


async def test_argument_errors(media: Media, uas: tuple[Ua, Ua]):
    a, _ = uas
    session_id = await media.session()

    async def code(call: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        return error.value.code(), error.value.details() or ""

    bad = grpc.StatusCode.INVALID_ARGUMENT
    update = media.stub.UpdateSession
    req = media_pb2.UpdateSessionRequest
    assert await code(update(req(session_id=session_id, from_leg=CALLER))) == (
        bad, "kind must be KIND_OFFER or KIND_ANSWER")
    assert await code(update(req(session_id=session_id, kind=OFFER))) == (
        bad, "from_leg must be LEG_CALLER or LEG_CALLEE")
    not_ip = audio(common_pb2.SocketAddress(ip="ue.example", port=4000))
    assert await code(update(req(session_id=session_id, kind=OFFER, from_leg=CALLER,
                                 streams=[not_ip]))) == (
        bad, "stream 0: rtp.ip 'ue.example' is not an IP address")
    v6 = audio(common_pb2.SocketAddress(ip="2001:db8::1", port=4000))
    assert await code(update(req(session_id=session_id, kind=OFFER, from_leg=CALLER,
                                 streams=[v6]))) == (
        bad, "stream 0: rtp.ip 2001:db8::1 is IPv6 but the relay sockets are IPv4")
    no_port = audio(common_pb2.SocketAddress(ip="127.0.0.1"))
    assert (await code(update(req(session_id=session_id, kind=OFFER, from_leg=CALLER,
                                  streams=[no_port]))))[1] == "stream 0: rtp.port 0 outside 1-65535"
    assert await code(update(req(session_id=session_id, kind=OFFER, from_leg=CALLER,
                                 streams=[audio(a.sdp), audio(a.sdp)]))) == (
        bad, "stream index 0 appears more than once")
    assert await code(update(req(session_id="", kind=OFFER, from_leg=CALLER))) == (
        bad, "session_id is empty")
    missing = grpc.StatusCode.NOT_FOUND
    assert await code(update(req(session_id="nope", kind=OFFER, from_leg=CALLER))) == (
        missing, "no media session nope")
    assert (await code(media.stub.DeleteSession(
        media_pb2.DeleteSessionRequest(session_id="nope"))))[0] == missing
    assert (await code(media.stub.QueryStats(
        media_pb2.QueryStatsRequest(session_id="nope"))))[0] == missing
    watch = media.stub.WatchEvents(media_pb2.WatchMediaEventsRequest(session_id="nope"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in watch:
            pass
    assert error.value.code() == missing


async def test_port_exhaustion_is_resource_exhausted(uas: tuple[Ua, Ua]):
    a, b = uas
    media, channel = await start_media(ports=4)  # two pairs
    try:
        first = await media.session()
        await media.update(first, OFFER, CALLER, audio(a.sdp))
        await media.update(first, ANSWER, CALLEE, audio(b.sdp))
        second = await media.session()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await media.update(second, OFFER, CALLER, audio(a.sdp))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"{media.low}-{media.high}" in (error.value.details() or "")
        await media.stub.DeleteSession(media_pb2.DeleteSessionRequest(session_id=first))
        [relay] = await media.update(second, OFFER, CALLER, audio(a.sdp))
        assert media.low <= relay.rtp.port <= media.high
    finally:
        await channel.close(None)
        await media.server.stop(grace=0)


async def test_drain_refuses_new_sessions():
    media, channel = await start_media()
    try:
        session_id = await media.session()
        stopping = asyncio.create_task(media.server.stop(grace=0.5))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await media.session()
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        # The call in progress may still finish within the grace period.
        await media.stub.DeleteSession(media_pb2.DeleteSessionRequest(session_id=session_id))
        await asyncio.wait_for(stopping, 2)
    finally:
        await channel.close(None)


async def test_ipv6_relay_with_an_advertised_address():
    media, channel = await start_media(bind="::1", advertised="2001:db8::5")
    a, b = await Ua.open("::1"), await Ua.open("::1")
    try:
        session_id = await media.session()
        [to_b] = await media.update(session_id, OFFER, CALLER, audio(a.sdp))
        [to_a] = await media.update(session_id, ANSWER, CALLEE, audio(b.sdp))
        assert to_a.rtp.ip == to_b.rtp.ip == "2001:db8::5"  # what the SDP must say
        a.send(rtp(1, 160), ("::1", to_a.rtp.port))  # where the relay really listens
        data, source = await b.recv()
        assert data == rtp(1, 160) and source == ("::1", to_b.rtp.port)
        v4 = audio(common_pb2.SocketAddress(ip="192.0.2.1", port=4000))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await media.update(session_id, OFFER, CALLER, v4)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        a.close()
        b.close()
        await channel.close(None)
        await media.server.stop(grace=0)


async def test_not_serving_while_the_bind_address_is_not_here():
    media, channel = await start_media(bind="192.0.2.1")  # TEST-NET-1: not on this host
    try:
        await asyncio.sleep(0.1)
        status = (await media.health.Check(health_pb2.HealthCheckRequest())).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        session_id = await media.session()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await media.update(session_id, OFFER, CALLER,
                               audio(common_pb2.SocketAddress(ip="192.0.2.10", port=4000)))
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot bind relay sockets on 192.0.2.1" in (error.value.details() or "")
    finally:
        await channel.close(None)
        await media.server.stop(grace=0)
