"""Kernel SCTP through pysctp: one-to-one (SOCK_STREAM) sockets driven by `loop.add_reader`.

Thin on purpose: the kernel does SCTP; this module sets the association parameters on each
socket (SCTP_INITMSG for the streams, RTO/association/peer-address parameters for heartbeats and
loss detection, SCTP_EVENTS for association-change and shutdown notifications) and maps what
`sctp_recv` returns onto `services.enb.sctp`'s events.

pysctp quirk (0.7.3): `sctpsocket.sctp_send()` byte-swaps the PPID with `ntohl()` and hands it to
C as a signed int, so a PPID whose low byte is >= 0x80 raises OverflowError; received PPIDs come
back in network byte order. So `_send()` below calls pysctp's C function `_sctp.sctp_send_msg`
with the value from `services.enb.sctp.ppid_to_wire` reinterpreted as a signed 32-bit integer
(every PPID works), and received PPIDs go through `ppid_from_wire`. Nothing else here touches a
PPID.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from typing import Any

from services.enb.sctp import (
    S1AP_PORT,
    Association,
    DownReason,
    SctpConfig,
    SctpHandler,
    SctpServer,
    SctpTransport,
)

try:
    import _sctp  # type: ignore[import-not-found]  # pysctp's C half
    import sctp as pysctp  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - pysctp is a declared dependency
    raise ImportError("kernel SCTP needs pysctp (pip install pysctp)") from exc

log = logging.getLogger(__name__)

# Linux <linux/sctp.h>
SOL_SCTP = socket.IPPROTO_SCTP
SCTP_RTOINFO, SCTP_ASSOCINFO, SCTP_NODELAY, SCTP_PEER_ADDR_PARAMS = 0, 1, 3, 9
SCTP_DELAYED_SACK = 16  # struct sctp_sack_info
SPP_HB_ENABLE = 1
RTOINFO = struct.Struct("=iIII")  # assoc_id, initial, max, min
ASSOCPARAMS = struct.Struct("=iHHIII")  # assoc_id, asocmaxrxt, peer dests, peer rwnd, ...
# struct sctp_paddrparams is packed, aligned(4): assoc_id, sockaddr_storage, hbinterval,
# pathmaxrxt, pathmtu, sackdelay, flags, ipv6_flowlabel, dscp (+1 byte of alignment)
PADDRPARAMS = struct.Struct("<i128sIHIIIIBx")
SACKINFO = struct.Struct("=iII")  # assoc_id, delay (ms), frequency (packets)
FLAG_NOTIFICATION: int = pysctp.FLAG_NOTIFICATION
FLAG_EOR: int = pysctp.FLAG_EOR
AC = pysctp.assoc_change
RECV_MAX = 1 << 16


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _configure(sk: Any, config: SctpConfig) -> None:
    c = config
    ip = sk.initparams
    ip.autoflush = False
    ip.num_ostreams = c.streams
    ip.max_instreams = c.streams
    ip.max_attempts = c.max_init_attempts
    ip.max_init_timeo = c.ms(c.max_init_timeout)
    ip.flush()
    ev = sk.events
    ev.autoflush = False
    ev.clear()  # data_io on, everything else off
    ev.association = 1
    ev.shutdown = 1
    ev.flush()
    raw = sk.sock()
    raw.setsockopt(SOL_SCTP, SCTP_RTOINFO, RTOINFO.pack(0, c.ms(c.rto_initial), c.ms(c.rto_max),
                                                        c.ms(c.rto_min)))
    raw.setsockopt(SOL_SCTP, SCTP_ASSOCINFO, ASSOCPARAMS.pack(0, c.max_retrans, 0, 0, 0, 0))
    raw.setsockopt(SOL_SCTP, SCTP_PEER_ADDR_PARAMS, PADDRPARAMS.pack(
        0, b"", c.ms(c.heartbeat_interval), c.max_retrans, 0, 0, SPP_HB_ENABLE, 0, 0))
    raw.setsockopt(SOL_SCTP, SCTP_DELAYED_SACK, SACKINFO.pack(0, c.ms(c.sack_delay), 2))
    raw.setsockopt(SOL_SCTP, SCTP_NODELAY, 1)


class _Conn:
    """One one-to-one socket = one association (a new `Association` object after a restart)."""

    def __init__(self, sk: Any, handler: SctpHandler, loop: asyncio.AbstractEventLoop,
                 peer: tuple[str, int], on_closed: Any = None) -> None:
        self.sk = sk
        self.fd: int = sk.fileno()
        self.handler = handler
        self.loop = loop
        self.closed = False
        self.on_closed = on_closed
        self._partial: dict[int, bytearray] = {}
        self._writer = False
        local = sk.getsockname()
        self.assoc = self._new_assoc(peer, (local[0], local[1]))
        sk.setblocking(False)
        loop.add_reader(self.fd, self._readable)

    def _new_assoc(self, peer: tuple[str, int], local: tuple[str, int]) -> Association:
        assoc = Association(self, self.handler, "kernel", peer, local)
        assoc.on_writable_wanted = self._want_write
        return assoc

    def up_from_status(self) -> None:
        st = self.sk.get_status()
        self.assoc._up(st.instrms, st.outstrms)

    # -- Channel -------------------------------------------------------------------------------

    def send(self, stream: int, wire_ppid: int, data: bytes) -> None:
        # The one call into pysctp's sender: the PPID is already in wire order (ppid_to_wire);
        # pysctp's C code takes it as a signed int, so reinterpret, never byte-swap again.
        _sctp.sctp_send_msg(self.fd, data, ("", 0), _signed32(wire_ppid), 0, stream, 0, 0)

    def shutdown(self) -> None:
        try:
            self.sk.sock().shutdown(socket.SHUT_WR)  # SHUTDOWN; SHUTDOWN_COMP comes back
        except OSError as exc:
            log.debug("kernel SCTP shutdown: %s", exc)
            self._finish(DownReason.SHUTDOWN)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sk.sock().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
        self._close_fd()  # close() with zero linger sends ABORT

    # -- events --------------------------------------------------------------------------------

    def _want_write(self) -> None:
        if not self._writer and not self.closed:
            self._writer = True
            self.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        if self.assoc._writable() or self.closed:
            self._writer = False
            if not self.closed:
                self.loop.remove_writer(self.fd)

    def _readable(self) -> None:
        for _ in range(64):  # bounded per wake-up: other sockets get their turn
            if self.closed:
                return
            try:
                _, flags, msg, info = self.sk.sctp_recv(RECV_MAX)
            except BlockingIOError:
                return
            except OSError as exc:
                # ECONNRESET after an ABORT (COMM_LOST usually came first), ETIMEDOUT, ...
                log.debug("kernel SCTP recv on %s: %s", self.assoc, exc)
                self._finish(DownReason.LOST)
                return
            if flags & FLAG_NOTIFICATION:
                self._notification(info)
            elif not msg:
                self._finish(DownReason.SHUTDOWN)  # EOF: the peer shut down
                return
            else:
                self._data(info.stream, info.ppid, msg, bool(flags & FLAG_EOR))

    def _data(self, stream: int, wire_ppid: int, msg: bytes, eor: bool) -> None:
        if not eor:
            self._partial.setdefault(stream, bytearray()).extend(msg)
            return
        part = self._partial.pop(stream, None)
        if part is not None:
            part.extend(msg)
            msg = bytes(part)
        self.assoc._message(stream, wire_ppid, msg)

    def _notification(self, n: Any) -> None:
        if not isinstance(n, AC):
            return
        log.debug("kernel SCTP %s: assoc change state %d error %d in %d out %d", self.assoc,
                  n.state, n.error, n.inbound_streams, n.outbound_streams)
        if n.state == AC.state_COMM_UP:
            self.assoc._up(n.inbound_streams, n.outbound_streams)
        elif n.state == AC.state_RESTART:
            old = self.assoc
            old._down(DownReason.RESTART)
            self._partial.clear()
            self.assoc = self._new_assoc(old.peer, old.local)
            self.assoc._up(n.inbound_streams, n.outbound_streams)
        elif n.state == AC.state_COMM_LOST:
            self._finish(DownReason.LOST)
        elif n.state == AC.state_SHUTDOWN_COMP:
            self._finish(DownReason.SHUTDOWN)
        elif n.state == AC.state_CANT_STR_ASSOC:
            self._finish(DownReason.LOST)

    def _finish(self, reason: DownReason) -> None:
        self._close_fd()
        self.assoc._down(reason)

    def _close_fd(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self._writer:
            self.loop.remove_writer(self.fd)
        self.sk.close()
        if self.on_closed is not None:
            self.on_closed(self)


class KernelServer(SctpServer):
    def __init__(self, sk: Any, handler: SctpHandler, loop: asyncio.AbstractEventLoop) -> None:
        self._sk = sk
        self._handler = handler
        self._loop = loop
        self._conns: set[_Conn] = set()
        self.host, self.port = sk.getsockname()[:2]
        sk.setblocking(False)
        loop.add_reader(sk.fileno(), self._accept)
        self._closed = False

    @property
    def associations(self) -> list[Association]:
        return [c.assoc for c in self._conns if c.assoc.is_up]

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sk, addr = self._sk.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("kernel SCTP accept: %s", exc)
                return
            conn = _Conn(sk, self._handler, self._loop, (addr[0], addr[1]),
                         on_closed=self._conns.discard)
            self._conns.add(conn)
            conn.up_from_status()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sk.fileno())
        self._sk.close()
        for conn in list(self._conns):
            conn.shutdown()
            conn._finish(DownReason.SHUTDOWN)


class KernelTransport(SctpTransport):
    kind = "kernel"

    def __init__(self, config: SctpConfig | None = None) -> None:
        super().__init__(config)

    async def create_server(self, handler: SctpHandler, host: str = "0.0.0.0",
                            port: int = S1AP_PORT) -> SctpServer:
        loop = asyncio.get_running_loop()
        sk = pysctp.sctpsocket_tcp(socket.AF_INET)
        try:
            sk.sock().setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _configure(sk, self.config)
            sk.bind((host, port))
            sk.listen(128)
        except BaseException:
            sk.close()
            raise
        return KernelServer(sk, handler, loop)

    async def connect(self, handler: SctpHandler, host: str, port: int = S1AP_PORT, *,
                      local_host: str = "0.0.0.0", local_port: int = 0,
                      timeout: float | None = None) -> Association:
        loop = asyncio.get_running_loop()
        sk = pysctp.sctpsocket_tcp(socket.AF_INET)
        try:
            _configure(sk, self.config)
            if local_port or local_host != "0.0.0.0":
                sk.sock().setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sk.bind((local_host, local_port))
            raw: socket.socket = sk.sock()
            raw.setblocking(False)
            c = self.config
            limit = timeout or (c.max_init_attempts + 1) * (c.max_init_timeout + c.rto_max)
            async with asyncio.timeout(limit):
                await loop.sock_connect(raw, (host, port))
        except OSError as exc:
            sk.close()
            if exc.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.ECONNRESET):
                raise ConnectionError(exc.errno, f"SCTP connect to {host}:{port}: "
                                                 f"{exc.strerror}") from exc
            raise
        except BaseException:
            sk.close()
            raise
        conn = _Conn(sk, handler, loop, (host, port))
        conn.up_from_status()
        return conn.assoc
