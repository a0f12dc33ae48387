"""SIP over UDP and TCP on asyncio: a thin shell around the sans-IO parser and framer.

What lives here and nowhere else: sockets, the received/rport rewrite of the top Via
(RFC 3261 section 18.2.1, RFC 3581), and the rule that a response goes back on the
connection its request came in on (section 18.2.2). Everything a message means is left to
the caller's `on_message(message, source)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from services.sip.errors import FramingError, ParseError
from services.sip.framing import KeepAlivePing, NeedData, RawMessage, StreamFramer
from services.sip.headers import Via
from services.sip.message import DEFAULT_LIMITS, Message, ParserLimits, Request, parse_message
from services.sip.rejection import rejection_for

log = logging.getLogger("volte.sip.transport")

Address = tuple[str, int]
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: enough to answer it and to reach that peer again."""

    transport: str  # "UDP" or "TCP"
    remote: Address
    local: Address
    flow: int = 0  # connection id for TCP (0 for UDP): the flow to answer on (RFC 5626)


MessageHandler = Callable[[Message, Source], None]


def install_event_loop_policy() -> str:
    """Use uvloop when it is installed; say which loop runs."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _same_host(via_host: str, ip: str) -> bool:
    host = via_host[1:-1] if via_host.startswith("[") else via_host
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(ip)
    except ValueError:
        return False  # a name: always record the address it really came from


def stamp_received(request: Request, remote: Address) -> None:
    """Record the source in the top Via: received when it differs, rport when asked (RFC 3581)."""
    via = request.top_via
    changes: dict[str, str | None] = {}
    wants_rport = "rport" in via.params
    if wants_rport or not _same_host(via.host, remote[0]):
        changes["received"] = remote[0]
    if wants_rport:
        changes["rport"] = str(remote[1])
    if changes:
        request.replace_top_via(via.with_params(**changes))


def response_destination(via: Via, default_port: int = 5060) -> Address:
    """Where a response goes over UDP (RFC 3261 section 18.2.2 with RFC 3581)."""
    host = via.params.get("received") or via.params.get("maddr") or via.host
    host = host[1:-1] if host.startswith("[") else host
    rport = via.params.get("rport")
    if rport and rport.isdigit():
        return host, int(rport)
    return host, via.port or default_port


@dataclass
class _Stats:
    received: int = 0
    sent: int = 0
    parse_errors: int = 0
    framing_errors: int = 0


class SipTransport:
    """UDP and TCP listeners plus outbound TCP connections, feeding one message handler."""

    def __init__(self, on_message: MessageHandler, limits: ParserLimits = DEFAULT_LIMITS) -> None:
        self._on_message = on_message
        self._limits = limits
        self._udp: dict[Address, asyncio.DatagramTransport] = {}
        self._tcp_servers: list[asyncio.Server] = []
        self._flows: dict[int, _TcpFlow] = {}
        self._flow_by_remote: dict[Address, int] = {}
        self._flow_ids = itertools.count(1)
        self.stats = _Stats()

    # -- listening ------------------------------------------------------------------------------
    async def listen_udp(self, host: str, port: int, *, reuse_port: bool = False) -> Address:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(host, port), reuse_port=reuse_port or None
        )
        local: Address = transport.get_extra_info("sockname")[:2]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Bursts of datagrams wait in the kernel rather than being dropped while we are
            # busy (capped by net.core.rmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        self._udp[local] = transport
        return local

    async def listen_tcp(self, host: str, port: int, *, reuse_port: bool = False) -> Address:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _TcpFlow(self), host, port, reuse_port=reuse_port or None
        )
        self._tcp_servers.append(server)
        return server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    def close_udp(self, local: Address) -> None:
        transport = self._udp.pop(local, None)
        if transport is not None:
            transport.close()

    @property
    def udp_addresses(self) -> list[Address]:
        return list(self._udp)

    # -- sending --------------------------------------------------------------------------------
    def send_udp(self, data: bytes, dest: Address, local: Address | None = None) -> None:
        if not self._udp:
            raise RuntimeError("no UDP listener to send from")
        transport = self._udp.get(local) if local else None
        (transport or next(iter(self._udp.values()))).sendto(data, dest)
        self.stats.sent += 1

    def has_flow(self, remote: Address) -> bool:
        """Is there an open connection to `remote` (a UE's registered TCP flow)?"""
        flow = self._flow_by_remote.get(remote)
        return flow is not None and not self._flows[flow].closing

    def send_on_flow(self, data: bytes, flow: int) -> bool:
        """Send on an existing TCP connection; False when it has gone."""
        conn = self._flows.get(flow)
        if conn is None or conn.closing:
            return False
        conn.write(data)
        self.stats.sent += 1
        return True

    async def send_tcp(self, data: bytes, dest: Address) -> int:
        """Send over the connection to `dest`, opening one if needed; returns the flow id."""
        flow = self._flow_by_remote.get(dest)
        if flow is not None and self.send_on_flow(data, flow):
            return flow
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _TcpFlow(self), dest[0], dest[1])
        conn.write(data)
        self.stats.sent += 1
        return conn.flow

    def reply(self, data: bytes, source: Source) -> None:
        """Answer a message where it came from: same connection, or back to the source address."""
        if source.transport == "TCP":
            if not self.send_on_flow(data, source.flow):
                log.info("connection gone, response dropped", extra={"flow": source.flow})
            return
        self.send_udp(data, source.remote, source.local)

    async def close(self) -> None:
        for server in self._tcp_servers:
            server.close()
        for conn in list(self._flows.values()):
            conn.close()
        for transport in self._udp.values():
            transport.close()
        for server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._udp.clear()
        self._tcp_servers.clear()

    # -- receiving (called by the protocols) ----------------------------------------------------
    def _handle(self, data: bytes, source: Source) -> None:
        self.stats.received += 1
        try:
            msg = parse_message(data, limits=self._limits)
            if isinstance(msg, Request):
                stamp_received(msg, source.remote)
        except ParseError as exc:
            self.stats.parse_errors += 1
            log.warning(
                "malformed SIP message dropped",
                extra={"reason": exc.reason, "peer": f"{source.remote[0]}:{source.remote[1]}"},
            )
            answer = rejection_for(data, exc)
            if answer is not None:
                self.reply(answer, source)
            return
        self._on_message(msg, source)

    def _register_flow(self, conn: _TcpFlow) -> int:
        flow = next(self._flow_ids)
        self._flows[flow] = conn
        self._flow_by_remote[conn.remote] = flow
        return flow

    def _forget_flow(self, conn: _TcpFlow) -> None:
        self._flows.pop(conn.flow, None)
        if self._flow_by_remote.get(conn.remote) == conn.flow:
            del self._flow_by_remote[conn.remote]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self._owner = owner
        self._local: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not data.strip(b"\r\n"):
            return  # CRLF keep-alive on UDP: nothing to answer
        remote = (str(addr[0]), int(addr[1]))
        self._owner._handle(data, Source("UDP", remote, self._local))

    def error_received(self, exc: Exception) -> None:
        log.info("UDP error", extra={"error": str(exc)})  # ICMP unreachable and friends


@dataclass(eq=False)
class _TcpFlow(asyncio.Protocol):
    owner: SipTransport
    flow: int = 0
    remote: Address = ("", 0)
    local: Address = ("", 0)
    closing: bool = False
    _transport: asyncio.Transport | None = None
    _framer: StreamFramer = field(default_factory=StreamFramer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.remote = transport.get_extra_info("peername")[:2]
        self.local = transport.get_extra_info("sockname")[:2]
        self._framer = StreamFramer(self.owner._limits)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.flow = self.owner._register_flow(self)

    def data_received(self, data: bytes) -> None:
        self._framer.feed(data)
        source = Source("TCP", self.remote, self.local, self.flow)
        while not self.closing:
            try:
                event = self._framer.next_event()
            except FramingError as exc:
                self.owner.stats.framing_errors += 1
                log.warning(
                    "closing SIP connection: cannot frame stream",
                    extra={"reason": exc.reason, "peer": f"{self.remote[0]}:{self.remote[1]}"},
                )
                self.close()
                return
            if isinstance(event, RawMessage):
                self.owner._handle(event.data, source)
            elif isinstance(event, KeepAlivePing):
                self.write(b"\r\n")  # pong (RFC 5626 section 4.4.1)
            elif isinstance(event, NeedData):
                return

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closing:
            self._transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.owner._forget_flow(self)
