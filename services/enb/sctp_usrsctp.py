"""Userspace SCTP: Debian's libusrsctp (the FreeBSD SCTP stack as a library) via ctypes, its
packets carried in UDP datagrams (RFC 6951 encapsulation) on asyncio datagram endpoints.

For hosts whose kernel has no SCTP. The SCTP protocol itself (INIT/COOKIE handshake, streams,
PPIDs, SACKs, retransmission, HEARTBEAT, ABORT, SHUTDOWN, restart detection) is usrsctp's; this
module only moves packets and maps events onto `services.enb.sctp`'s interface.

How it is wired (usrsctp's "AF_CONN" lower layer, as WebRTC data channels use it):
- One usrsctp stack per process, started with `usrsctp_init_nothreads`: no threads of its own,
  no raw sockets; its timers advance from an asyncio timer every 10 ms, so every callback runs on
  the event loop thread.
- Each server and each client owns one UDP socket. Every remote UDP address it talks to gets an
  opaque handle that usrsctp uses as the SCTP-level address; usrsctp hands outgoing packets to
  `_conn_output`, which sends them to that address, and received datagrams go to
  `usrsctp_conninput`. The UDP payload is the plain SCTP packet (common header with CRC32c and
  chunks): what RFC 6951 puts in UDP, so tshark decodes it (`-d udp.port==N,sctp`).
- The UDP port equals the SCTP port at both ends: a server on port 36412 listens on UDP 36412,
  and a client bound to SCTP port P sends from UDP port P. One number per endpoint, and a client
  restarting on the same port is recognised by the server as the same peer (RESTART).
- One-to-many (SOCK_SEQPACKET) usrsctp sockets, non-blocking, with an upcall that schedules a
  drain of `usrsctp_recvv` on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import itertools
import logging
import socket
import struct
import time
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_int,
    c_size_t,
    c_ssize_t,
    c_uint,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
    sizeof,
)
from typing import Any, cast

from services.enb.sctp import (
    S1AP_PORT,
    Association,
    DownReason,
    SctpConfig,
    SctpHandler,
    SctpServer,
    SctpTransport,
)

log = logging.getLogger(__name__)

LIBRARY = "libusrsctp.so.2"  # Debian package libusrsctp2
AF_CONN = 123
SOCK_SEQPACKET = 5
IPPROTO_SCTP = 132
MSG_NOTIFICATION = 0x2000
MSG_EOR = 0x80  # Linux value; usrsctp passes the system's flag through
SCTP_FUTURE_ASSOC = 0
SCTP_EVENT_READ = 1
# socket options
SCTP_RTOINFO, SCTP_ASSOCINFO, SCTP_INITMSG, SCTP_NODELAY = 0x1, 0x2, 0x3, 0x4
SCTP_PEER_ADDR_PARAMS, SCTP_DELAYED_SACK, SCTP_EVENT, SCTP_RECVRCVINFO = 0xA, 0xF, 0x1E, 0x1F
SPP_HB_ENABLE = 0x1
SCTP_SENDV_SNDINFO = 1
SCTP_RECVV_RCVINFO = 1
SCTP_EOF, SCTP_ABORT = 0x100, 0x200
# notifications
SCTP_ASSOC_CHANGE, SCTP_SHUTDOWN_EVENT = 0x1, 0x5
SCTP_COMM_UP, SCTP_COMM_LOST, SCTP_RESTART, SCTP_SHUTDOWN_COMP, SCTP_CANT_STR_ASSOC = 1, 2, 3, 4, 5
TICK = 0.010  # seconds between usrsctp_handle_timers calls
HANDLE_LINGER = 5.0  # seconds a server keeps a gone peer's address handle
RECV_BUFFER = 1 << 16


class SockaddrConn(Structure):
    _fields_ = [("sconn_family", c_uint16), ("sconn_port", c_uint16), ("sconn_addr", c_void_p)]


class SockaddrStorage(Structure):
    _fields_ = [("data", c_uint64 * 16)]


class InitMsg(Structure):
    _fields_ = [("sinit_num_ostreams", c_uint16), ("sinit_max_instreams", c_uint16),
                ("sinit_max_attempts", c_uint16), ("sinit_max_init_timeo", c_uint16)]


class RtoInfo(Structure):
    _fields_ = [("srto_assoc_id", c_uint32), ("srto_initial", c_uint32), ("srto_max", c_uint32),
                ("srto_min", c_uint32)]


class AssocParams(Structure):
    _fields_ = [("sasoc_assoc_id", c_uint32), ("sasoc_peer_rwnd", c_uint32),
                ("sasoc_local_rwnd", c_uint32), ("sasoc_cookie_life", c_uint32),
                ("sasoc_asocmaxrxt", c_uint16), ("sasoc_number_peer_destinations", c_uint16)]


class PaddrParams(Structure):
    _fields_ = [("spp_address", SockaddrStorage), ("spp_assoc_id", c_uint32),
                ("spp_hbinterval", c_uint32), ("spp_pathmtu", c_uint32), ("spp_flags", c_uint32),
                ("spp_ipv6_flowlabel", c_uint32), ("spp_pathmaxrxt", c_uint16),
                ("spp_dscp", c_uint8)]


class SackInfo(Structure):
    _fields_ = [("sack_assoc_id", c_uint32), ("sack_delay", c_uint32), ("sack_freq", c_uint32)]


class Event(Structure):
    _fields_ = [("se_assoc_id", c_uint32), ("se_type", c_uint16), ("se_on", c_uint8)]


class SndInfo(Structure):
    _fields_ = [("snd_sid", c_uint16), ("snd_flags", c_uint16), ("snd_ppid", c_uint32),
                ("snd_context", c_uint32), ("snd_assoc_id", c_uint32)]


class RcvInfo(Structure):
    _fields_ = [("rcv_sid", c_uint16), ("rcv_ssn", c_uint16), ("rcv_flags", c_uint16),
                ("rcv_ppid", c_uint32), ("rcv_tsn", c_uint32), ("rcv_cumtsn", c_uint32),
                ("rcv_context", c_uint32), ("rcv_assoc_id", c_uint32)]


CONN_OUTPUT = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, c_uint8, c_uint8)
UPCALL = CFUNCTYPE(None, c_void_p, c_void_p, c_int)
ASSOC_CHANGE = struct.Struct("=HHIHHHHI")


class UsrsctpUnavailable(RuntimeError):
    pass


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as exc:
        found = ctypes.util.find_library("usrsctp")
        if found is None:
            raise UsrsctpUnavailable(
                f"{LIBRARY} not found: install Debian's libusrsctp2 (`make deps`)") from exc
        lib = ctypes.CDLL(found, use_errno=True)
    proto: dict[str, tuple[Any, list[Any]]] = {
        "usrsctp_init_nothreads": (None, [c_uint16, CONN_OUTPUT, c_void_p]),
        "usrsctp_socket": (c_void_p, [c_int, c_int, c_int, c_void_p, c_void_p, c_uint32,
                                      c_void_p]),
        "usrsctp_setsockopt": (c_int, [c_void_p, c_int, c_int, c_void_p, c_uint32]),
        "usrsctp_sendv": (c_ssize_t, [c_void_p, c_char_p, c_size_t, c_void_p, c_int, c_void_p,
                                      c_uint32, c_uint, c_int]),
        "usrsctp_recvv": (c_ssize_t, [c_void_p, c_void_p, c_size_t, c_void_p, POINTER(c_uint32),
                                      c_void_p, POINTER(c_uint32), POINTER(c_uint),
                                      POINTER(c_int)]),
        "usrsctp_bind": (c_int, [c_void_p, c_void_p, c_uint32]),
        "usrsctp_listen": (c_int, [c_void_p, c_int]),
        "usrsctp_connect": (c_int, [c_void_p, c_void_p, c_uint32]),
        "usrsctp_close": (None, [c_void_p]),
        "usrsctp_conninput": (None, [c_void_p, c_char_p, c_size_t, c_uint8]),
        "usrsctp_set_non_blocking": (c_int, [c_void_p, c_int]),
        "usrsctp_register_address": (None, [c_void_p]),
        "usrsctp_deregister_address": (None, [c_void_p]),
        "usrsctp_set_upcall": (c_int, [c_void_p, UPCALL, c_void_p]),
        "usrsctp_handle_timers": (None, [c_uint32]),
        "usrsctp_get_events": (c_int, [c_void_p]),
    }
    for name, (restype, argtypes) in proto.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


class _Stack:
    """The process's one usrsctp instance, its address handles and its timer."""

    _instance: _Stack | None = None

    @classmethod
    def get(cls) -> _Stack:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        self.lib = _load()
        self.handles: dict[int, tuple[_UdpLink, tuple[str, int]]] = {}
        self.sockets: dict[int, _Socket] = {}
        self._next_handle = itertools.count(1)
        self._next_socket = itertools.count(1)
        # Keep the C callbacks alive as long as the library may call them (the process).
        self._conn_output = CONN_OUTPUT(self._output)
        self.upcall = UPCALL(self._upcall)
        self.lib.usrsctp_init_nothreads(0, self._conn_output, None)
        self._tick_loop: asyncio.AbstractEventLoop | None = None
        self._last_tick = time.monotonic()
        self._idle_since: float | None = None

    # -- addresses -----------------------------------------------------------------------------

    def new_handle(self, link: _UdpLink, remote: tuple[str, int]) -> int:
        handle = next(self._next_handle)
        self.handles[handle] = (link, remote)
        self.lib.usrsctp_register_address(c_void_p(handle))
        return handle

    def drop_handle(self, handle: int) -> None:
        if self.handles.pop(handle, None) is not None:
            self.lib.usrsctp_deregister_address(c_void_p(handle))

    def _output(self, addr: int | None, buf: int | None, length: int, _tos: int,
                _set_df: int) -> int:
        entry = self.handles.get(addr or 0)
        if entry is not None and buf is not None:
            link, remote = entry
            link.send(ctypes.string_at(buf, length), remote)
        return 0  # a packet we cannot send is a packet lost on the way

    # -- sockets -------------------------------------------------------------------------------

    def _upcall(self, _so: int | None, arg: int | None, flags: int) -> None:
        sock = self.sockets.get(arg or 0)
        if sock is not None:
            sock.wake(flags)

    def register(self, sock: _Socket) -> int:
        sock_id = next(self._next_socket)
        self.sockets[sock_id] = sock
        return sock_id

    # -- timers --------------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive usrsctp's timers from `loop` (the most recent loop that opened a socket)."""
        self._idle_since = None
        if self._tick_loop is loop:
            return
        self._tick_loop = loop
        self._last_tick = time.monotonic()
        loop.call_later(TICK, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._tick_loop:
            return
        now = time.monotonic()
        elapsed_ms = int((now - self._last_tick) * 1000)
        if elapsed_ms > 0:
            self._last_tick += elapsed_ms / 1000
            self.lib.usrsctp_handle_timers(elapsed_ms)
            # Notifications raised from timers (association lost after unanswered heartbeats,
            # for one) come without an upcall: look for readable sockets ourselves.
            # Likewise send-buffer space: usrsctp_get_events does not track it per association
            # on a one-to-many socket, so queued messages are retried every tick.
            for sock in list(self.sockets.values()):
                if self.lib.usrsctp_get_events(sock.so) & SCTP_EVENT_READ:
                    sock.wake(SCTP_EVENT_READ)
                if sock.has_pending():
                    sock.flush()
        if not self.sockets:
            # Keep time going a while after the last socket closed (SHUTDOWN/ABORT retransmits),
            # then stop waking up; the next socket restarts the timer.
            self._idle_since = self._idle_since or now
            if now - self._idle_since > 10.0:
                self._tick_loop = None
                return
        loop.call_later(TICK, self._tick, loop)


class _UdpLink(asyncio.DatagramProtocol):
    """One UDP socket carrying SCTP packets to and from any number of remote UDP addresses."""

    def __init__(self, stack: _Stack, remote: tuple[str, int] | None) -> None:
        self.stack = stack
        self.fixed_remote = remote
        self.peers: dict[tuple[str, int], int] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.blackhole = False  # tests: drop everything in both directions
        self.port = 0
        self.owner: _Socket | None = None  # a server's listening socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = self.transport.get_extra_info("sockname")[1]
        _links.add(self)

    def handle_for(self, addr: tuple[str, int]) -> int:
        handle = self.peers.get(addr)
        if handle is None:
            handle = self.peers[addr] = self.stack.new_handle(self, addr)
        return handle

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.blackhole or len(data) < 16:  # common header + one chunk header
            return
        addr = (addr[0], addr[1])
        if self.fixed_remote is not None and addr != self.fixed_remote:
            return
        handle = self.peers.get(addr)
        if handle is None:
            # A server meets a new peer: only an INIT (first chunk type 1) may start one, and a
            # peer that has no association a while later is forgotten again.
            if data[12] != 1:
                return
            handle = self.handle_for(addr)
            loop = asyncio.get_running_loop()
            loop.call_later(HANDLE_LINGER, self._expire, handle)
        self.stack.lib.usrsctp_conninput(c_void_p(handle), data, len(data), 0)

    def _expire(self, handle: int) -> None:
        if self.owner is not None and handle not in self.owner.assoc_handles.values():
            self.forget(handle)

    def error_received(self, exc: Exception) -> None:
        log.debug("usrsctp UDP link %s: %s", self.port, exc)  # ICMP port unreachable etc.

    def send(self, packet: bytes, remote: tuple[str, int]) -> None:
        if self.transport is not None and not self.blackhole and not self.transport.is_closing():
            self.transport.sendto(packet, remote)

    def forget(self, handle: int) -> None:
        """Drop the handle of a remote address no association uses any more."""
        for addr, h in list(self.peers.items()):
            if h == handle:
                del self.peers[addr]
                self.stack.drop_handle(handle)

    def close(self) -> None:
        for handle in self.peers.values():
            self.stack.drop_handle(handle)
        self.peers.clear()
        if self.transport is not None:
            self.transport.close()
        _links.discard(self)


_links: set[_UdpLink] = set()


def set_blackhole(port: int, on: bool) -> None:
    """Tests: silently drop all SCTP packets of the endpoint using UDP port `port`, both ways
    (the peer vanishes without ABORT or SHUTDOWN, as when its host dies)."""
    for link in list(_links):
        if link.port == port:
            link.blackhole = on


class _Socket:
    """One usrsctp one-to-many socket and its associations (by usrsctp assoc id)."""

    def __init__(self, transport: UsrsctpTransport, handler: SctpHandler, link: _UdpLink,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.stack = transport.stack
        self.config = transport.config
        self.handler = handler
        self.link = link
        self.loop = loop
        self.assocs: dict[int, Association] = {}
        self.assoc_handles: dict[int, int] = {}  # assoc id -> handle of its remote address
        self.closed = False
        self._drain_scheduled = False
        self._partial: dict[tuple[int, int], bytearray] = {}
        self.connect_waiter: asyncio.Future[Association] | None = None
        self.is_client = False
        self.local_port = 0
        lib = self.stack.lib
        so = lib.usrsctp_socket(AF_CONN, SOCK_SEQPACKET, IPPROTO_SCTP, None, None, 0, None)
        if not so:
            raise OSError(ctypes.get_errno(), "usrsctp_socket failed")
        self.so = c_void_p(so)
        self.id = self.stack.register(self)
        lib.usrsctp_set_non_blocking(self.so, 1)
        lib.usrsctp_set_upcall(self.so, self.stack.upcall, c_void_p(self.id))
        self._options()
        self.buf = ctypes.create_string_buffer(RECV_BUFFER)

    def _setopt(self, option: int, value: Structure | c_int) -> None:
        if self.stack.lib.usrsctp_setsockopt(self.so, IPPROTO_SCTP, option, byref(value),
                                             sizeof(value)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"usrsctp_setsockopt({option:#x}): {errno.errorcode.get(err)}")

    def _options(self) -> None:
        c = self.config
        self._setopt(SCTP_INITMSG, InitMsg(c.streams, c.streams, c.max_init_attempts,
                                           c.ms(c.max_init_timeout)))
        self._setopt(SCTP_RTOINFO, RtoInfo(SCTP_FUTURE_ASSOC, c.ms(c.rto_initial),
                                           c.ms(c.rto_max), c.ms(c.rto_min)))
        self._setopt(SCTP_ASSOCINFO, AssocParams(sasoc_assoc_id=SCTP_FUTURE_ASSOC,
                                                 sasoc_asocmaxrxt=c.max_retrans))
        self._setopt(SCTP_PEER_ADDR_PARAMS, PaddrParams(
            spp_assoc_id=SCTP_FUTURE_ASSOC, spp_hbinterval=c.ms(c.heartbeat_interval),
            spp_flags=SPP_HB_ENABLE, spp_pathmaxrxt=c.max_retrans))
        self._setopt(SCTP_DELAYED_SACK, SackInfo(SCTP_FUTURE_ASSOC, c.ms(c.sack_delay), 2))
        self._setopt(SCTP_NODELAY, c_int(1))
        self._setopt(SCTP_RECVRCVINFO, c_int(1))
        for event in (SCTP_ASSOC_CHANGE, SCTP_SHUTDOWN_EVENT):
            self._setopt(SCTP_EVENT, Event(SCTP_FUTURE_ASSOC, event, 1))

    def bind(self, handle: int | None, port: int) -> None:
        addr = SockaddrConn(AF_CONN, _htons(port), c_void_p(handle) if handle else None)
        if self.stack.lib.usrsctp_bind(self.so, byref(addr), sizeof(addr)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"usrsctp_bind port {port}: {errno.errorcode.get(err)}")
        self.local_port = port

    # -- receive -------------------------------------------------------------------------------

    def wake(self, flags: int) -> None:
        if self.closed or self._drain_scheduled:
            return
        self._drain_scheduled = True
        try:
            self.loop.call_soon(self._drain, flags)
        except RuntimeError:  # that loop is closed: a socket left over from an earlier loop
            self._drain_scheduled = False

    def _drain(self, flags: int) -> None:
        self._drain_scheduled = False
        if self.closed:
            return
        lib = self.stack.lib
        info = RcvInfo()
        frm = SockaddrConn()
        while True:
            fromlen = c_uint32(sizeof(frm))
            infolen = c_uint32(sizeof(info))
            infotype = c_uint(0)
            msg_flags = c_int(0)
            n = lib.usrsctp_recvv(self.so, self.buf, RECV_BUFFER, byref(frm), byref(fromlen),
                                  byref(info), byref(infolen), byref(infotype),
                                  byref(msg_flags))
            if n < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    log.debug("usrsctp_recvv: %s", errno.errorcode.get(err, err))
                break
            if n == 0:
                break
            data = self.buf.raw[:n]
            if msg_flags.value & MSG_NOTIFICATION:
                self._notification(data, frm)
                if self.id not in self.stack.sockets:  # that closed this socket
                    return
            elif infotype.value == SCTP_RECVV_RCVINFO:
                self._data(info, data, bool(msg_flags.value & MSG_EOR))
        self.flush()

    def _data(self, info: RcvInfo, data: bytes, eor: bool) -> None:
        assoc = self.assocs.get(info.rcv_assoc_id)
        if assoc is None:
            return
        key = (info.rcv_assoc_id, info.rcv_sid)
        if not eor:
            self._partial.setdefault(key, bytearray()).extend(data)
            return
        part = self._partial.pop(key, None)
        if part is not None:
            part.extend(data)
            data = bytes(part)
        assoc._message(info.rcv_sid, info.rcv_ppid, data)

    def _notification(self, data: bytes, frm: SockaddrConn) -> None:
        if len(data) < 8:
            return
        sn_type = struct.unpack_from("=H", data)[0]
        if sn_type != SCTP_ASSOC_CHANGE or len(data) < ASSOC_CHANGE.size:
            return
        _, _, _, state, error, outbound, inbound, assoc_id = ASSOC_CHANGE.unpack_from(data)
        assoc = self.assocs.get(assoc_id)
        log.debug("usrsctp assoc %d change: state %d error %d in %d out %d", assoc_id, state,
                  error, inbound, outbound)
        if state == SCTP_COMM_UP:
            if assoc is None:
                assoc = self._new_assoc(assoc_id, frm)
                assoc._up(inbound, outbound)
                if self.connect_waiter is not None and not self.connect_waiter.done():
                    self.connect_waiter.set_result(assoc)
        elif state == SCTP_RESTART:
            if assoc is not None:
                peer = assoc.peer
                assoc._down(DownReason.RESTART)
                new = Association(_Channel(self, assoc_id), self.handler, "userspace", peer,
                                  assoc.local)
                self.assocs[assoc_id] = new
                new._up(inbound, outbound)
        elif state in (SCTP_COMM_LOST, SCTP_SHUTDOWN_COMP):
            self._partial = {k: v for k, v in self._partial.items() if k[0] != assoc_id}
            if assoc is not None:
                del self.assocs[assoc_id]
                assoc._down(DownReason.SHUTDOWN if state == SCTP_SHUTDOWN_COMP
                            else DownReason.LOST)
            self._release_handle(assoc_id)
            self._gone()
        elif (state == SCTP_CANT_STR_ASSOC and self.connect_waiter is not None
              and not self.connect_waiter.done()):
            self.connect_waiter.set_exception(
                ConnectionRefusedError(f"SCTP association could not be set up (error {error})"))

    def _release_handle(self, assoc_id: int) -> None:
        """A server forgets a peer's UDP address a while after its last association ended (a
        long-running agent sees eNBs come and go from ever new ports)."""
        handle = self.assoc_handles.pop(assoc_id, None)
        if handle is None or self.is_client:
            return

        with contextlib.suppress(RuntimeError):  # loop closed: the link goes with the socket
            self.loop.call_later(HANDLE_LINGER, self.link._expire, handle)

    def _new_assoc(self, assoc_id: int, frm: SockaddrConn) -> Association:
        if frm.sconn_addr:
            self.assoc_handles[assoc_id] = frm.sconn_addr
        entry = self.stack.handles.get(frm.sconn_addr or 0)
        remote_ip = entry[1][0] if entry else "?"
        peer = (remote_ip, _htons(frm.sconn_port))
        local = (self.link.transport.get_extra_info("sockname")[0] if self.link.transport
                 else "?", self.local_port)
        assoc = Association(_Channel(self, assoc_id), self.handler, "userspace", peer, local)
        self.assocs[assoc_id] = assoc
        return assoc

    def has_pending(self) -> bool:
        return any(a._pending for a in self.assocs.values())

    def flush(self) -> None:
        for assoc in list(self.assocs.values()):
            if assoc._pending:
                assoc._writable()

    def _gone(self) -> None:
        """An association ended: a client's socket and UDP link go with it."""
        if self.is_client and not self.assocs:
            if self.connect_waiter is not None and not self.connect_waiter.done():
                self.connect_waiter.set_exception(ConnectionError("SCTP association lost"))
            self.close()

    # -- send ----------------------------------------------------------------------------------

    def sendv(self, assoc_id: int, stream: int, wire_ppid: int, data: bytes, flags: int) -> None:
        info = SndInfo(snd_sid=stream, snd_flags=flags, snd_ppid=wire_ppid,
                       snd_assoc_id=assoc_id)
        n = self.stack.lib.usrsctp_sendv(self.so, data, len(data), None, 0, byref(info),
                                         sizeof(info), SCTP_SENDV_SNDINFO, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BlockingIOError(err, "usrsctp send buffer full")
            raise OSError(err, f"usrsctp_sendv: {errno.errorcode.get(err, err)}")

    def close(self, reason: DownReason = DownReason.SHUTDOWN) -> None:
        if self.closed:
            return
        live = list(self.assocs.values())
        for assoc in live:
            assoc._down(reason)
        self.assocs.clear()
        self.closed = True
        self.stack.sockets.pop(self.id, None)
        self.stack.lib.usrsctp_close(self.so)  # graceful SHUTDOWN of what is left
        if not live or reason != DownReason.SHUTDOWN:
            self.link.close()
            return
        # The UDP link stays open a moment so the SHUTDOWN exchange can complete.
        try:
            self.loop.call_later(2.0, self.link.close)
        except RuntimeError:  # loop closed
            self.link.close()


class _Channel:
    def __init__(self, sock: _Socket, assoc_id: int) -> None:
        self.sock = sock
        self.assoc_id = assoc_id

    def send(self, stream: int, wire_ppid: int, data: bytes) -> None:
        self.sock.sendv(self.assoc_id, stream, wire_ppid, data, 0)

    def shutdown(self) -> None:
        self.sock.sendv(self.assoc_id, 0, 0, b"", SCTP_EOF)

    def abort(self) -> None:
        try:
            self.sock.sendv(self.assoc_id, 0, 0, b"", SCTP_ABORT)
        except OSError as exc:
            log.debug("usrsctp abort: %s", exc)
        self.sock.assocs.pop(self.assoc_id, None)
        self.sock._release_handle(self.assoc_id)
        self.sock._gone()


def _htons(port: int) -> int:
    return int.from_bytes(port.to_bytes(2, "big"), "little")


class UsrsctpServer(SctpServer):
    def __init__(self, sock: _Socket, host: str, port: int) -> None:
        self._sock = sock
        self.host = host
        self.port = port

    @property
    def associations(self) -> list[Association]:
        return [a for a in self._sock.assocs.values() if a.is_up]

    def close(self) -> None:
        self._sock.close()


class UsrsctpTransport(SctpTransport):
    kind = "userspace"

    def __init__(self, config: SctpConfig | None = None) -> None:
        super().__init__(config)
        self.stack = _Stack.get()

    async def create_server(self, handler: SctpHandler, host: str = "0.0.0.0",
                            port: int = S1AP_PORT) -> SctpServer:
        loop = asyncio.get_running_loop()
        self.stack.attach(loop)
        _, link = await loop.create_datagram_endpoint(
            lambda: _UdpLink(self.stack, None), local_addr=(host, port))
        try:
            sock = _Socket(self, handler, link, loop)
            link.owner = sock
            sock.bind(None, link.port)
            if self.stack.lib.usrsctp_listen(sock.so, 128) != 0:
                raise OSError(ctypes.get_errno(), "usrsctp_listen failed")
        except BaseException:
            link.close()
            raise
        log.debug("usrsctp server on %s: SCTP port %d over UDP", host, link.port)
        return UsrsctpServer(sock, host, link.port)

    async def connect(self, handler: SctpHandler, host: str, port: int = S1AP_PORT, *,
                      local_host: str = "0.0.0.0", local_port: int = 0,
                      timeout: float | None = None) -> Association:
        loop = asyncio.get_running_loop()
        self.stack.attach(loop)
        remote_ip = str((await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM))[0][4][0])
        remote = (remote_ip, port)
        _, link = await loop.create_datagram_endpoint(
            lambda: _UdpLink(self.stack, remote), local_addr=(local_host, local_port))
        sock: _Socket | None = None
        try:
            sock = _Socket(self, handler, link, loop)
            handle = link.handle_for(remote)
            try:
                sock.bind(handle, link.port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or local_port:
                    raise
                sock.bind(handle, 0)  # SCTP port taken in this process's stack: any port
            sock.is_client = True
            sock.connect_waiter = loop.create_future()
            addr = SockaddrConn(AF_CONN, _htons(port), c_void_p(handle))
            if self.stack.lib.usrsctp_connect(sock.so, byref(addr), sizeof(addr)) != 0:
                err = ctypes.get_errno()
                if err != errno.EINPROGRESS:
                    raise ConnectionError(err, f"usrsctp_connect: {errno.errorcode.get(err)}")
            c = self.config
            limit = timeout or (c.max_init_attempts + 1) * (c.max_init_timeout + c.rto_max)
            async with asyncio.timeout(limit):
                return await sock.connect_waiter
        except BaseException:
            if sock is not None:
                sock.connect_waiter = None
                sock.close(DownReason.ABORTED)
            link.close()
            raise
