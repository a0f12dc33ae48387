"""Pluggable SCTP transport for the eNodeB agent (S1AP: port 36412, PPID 18, several streams).

The agent and the eNB simulator see one small asyncio-facing interface; two implementations sit
behind `open_transport()`:

- ``kernel`` (services/enb/sctp_kernel.py): the kernel's SCTP through pysctp, one-to-one
  sockets, driven by `loop.add_reader`. Used wherever `socket(AF_INET, SOCK_STREAM,
  IPPROTO_SCTP)` works.
- ``userspace`` (services/enb/sctp_usrsctp.py): Debian's libusrsctp (the FreeBSD SCTP stack as a
  library) through ctypes, its packets carried in UDP datagrams (RFC 6951 encapsulation: the
  UDP payload is a complete SCTP packet, CRC32c included). For hosts whose kernel has no SCTP,
  like the ones this project is built on. Both ends must use it: a kernel SCTP peer does not
  speak to it unless that kernel's own UDP encapsulation is enabled.

`open_transport("auto")` picks kernel when the kernel can make an SCTP socket, userspace
otherwise, and logs which one once.

    transport = open_transport()
    server = await transport.create_server(handler, "0.0.0.0", S1AP_PORT)
    assoc = await transport.connect(handler, "127.0.0.1", S1AP_PORT)
    assoc.send(stream=1, ppid=S1AP_PPID, data=pdu)

Events go to a handler (subclass `SctpHandler`): `on_association_up(assoc, inbound_streams,
outbound_streams)`, `on_message(assoc, stream, ppid, data)` (one call per SCTP message, its
boundaries kept) and `on_association_down(assoc, reason)` with `DownReason` LOST (heartbeats or
retransmissions went unanswered, or the peer aborted), RESTART (the peer came back with a new
INIT while the association was up: the old `Association` goes down and a new one comes up),
SHUTDOWN (graceful, either side) or ABORTED (we aborted it). `on_association_down` is called
once per association, and nothing is called for it after that.

PPIDs: the sockets API carries the payload protocol identifier as an opaque 32-bit field copied
to the wire as-is, so a host-order integer must be byte-swapped on the way in and out.
`ppid_to_wire`/`ppid_from_wire` below are the one place that happens, for both implementations.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger(__name__)

S1AP_PORT = 36412  # TS 36.412
S1AP_PPID = 18  # IANA SCTP payload protocol identifier for S1AP
MAX_PENDING = 10_000  # messages queued while the send buffer is full, per association

TransportKind = Literal["kernel", "userspace"]


class DownReason(enum.StrEnum):
    LOST = "lost"  # peer unreachable (heartbeat/retransmission limit) or the peer aborted
    RESTART = "restart"  # the peer restarted (new INIT on a live association)
    SHUTDOWN = "shutdown"  # graceful SHUTDOWN, started by either side
    ABORTED = "aborted"  # we aborted it (abort(), or the transport was closed hard)


class SctpError(OSError):
    """The association cannot carry the request (down, stream out of range, buffer full)."""


@dataclass(frozen=True)
class SctpConfig:
    """Association parameters, applied to every association a transport makes or accepts.

    Times are in seconds. Defaults suit an eNB link on a LAN: heartbeat every 5 s and loss
    detected within `loss_detection_bound()` (~ 40 s); tests shrink them to a second or two.
    """

    streams: int = 8  # outbound streams requested, and the most inbound streams accepted (INIT)
    heartbeat_interval: float = 5.0
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 2.0
    max_retrans: int = 4  # association (and path) max retransmissions before LOST
    max_init_attempts: int = 4
    max_init_timeout: float = 2.0
    # Delayed SACK (RFC 4960 allows up to 0.2 s, the stacks' default). Kept well under rto_min
    # so that a lone message is acknowledged before its retransmission timer fires.
    sack_delay: float = 0.05

    def __post_init__(self) -> None:
        if not 1 <= self.streams <= 65535:
            raise ValueError(f"streams must be 1..65535, not {self.streams}")
        if not 0 < self.rto_min <= self.rto_initial <= self.rto_max:
            raise ValueError("need 0 < rto_min <= rto_initial <= rto_max")
        if self.heartbeat_interval <= 0 or self.max_retrans < 1:
            raise ValueError("heartbeat_interval must be > 0 and max_retrans >= 1")
        if not 0 < self.sack_delay < self.rto_min:
            raise ValueError("need 0 < sack_delay < rto_min")

    def loss_detection_bound(self) -> float:
        """Worst case, in seconds, from the peer going silent to `DownReason.LOST`.

        Each unanswered heartbeat counts one error; a heartbeat goes out every
        `heartbeat_interval` + RTO (RTO jittered by +-50 % and doubling up to `rto_max`); the
        association is declared lost after `max_retrans` + 1 errors. Retransmissions of
        outstanding data count the same way, only faster.
        """
        return (self.max_retrans + 2) * (self.heartbeat_interval + 1.5 * self.rto_max)

    def ms(self, seconds: float) -> int:
        return max(1, round(seconds * 1000))


def ppid_to_wire(ppid: int) -> int:
    """Host-order PPID -> the integer whose in-memory (native) bytes are the PPID in network
    order, which is what the sockets API's sinfo_ppid/snd_ppid field expects."""
    if not 0 <= ppid <= 0xFFFFFFFF:
        raise ValueError(f"PPID must be a 32-bit unsigned integer, not {ppid}")
    return int.from_bytes(ppid.to_bytes(4, "big"), sys.byteorder)


def ppid_from_wire(raw: int) -> int:
    """Inverse of `ppid_to_wire`: a received sinfo_ppid/rcv_ppid (signed or not) -> host order."""
    return int.from_bytes((raw & 0xFFFFFFFF).to_bytes(4, sys.byteorder), "big")


class SctpHandler:
    """Event sink for a server's or a client's associations. Override what you need; the
    callbacks run on the event loop and must not block."""

    def on_association_up(self, assoc: Association, inbound_streams: int,
                          outbound_streams: int) -> None:
        pass

    def on_message(self, assoc: Association, stream: int, ppid: int, data: bytes) -> None:
        pass

    def on_association_down(self, assoc: Association, reason: DownReason) -> None:
        pass


@dataclass(frozen=True)
class SctpEvent:
    kind: Literal["up", "message", "down"]
    assoc: Association
    stream: int = 0
    ppid: int = 0
    data: bytes = b""
    inbound_streams: int = 0
    outbound_streams: int = 0
    reason: DownReason | None = None


class EventQueue(SctpHandler):
    """A handler that queues every event, for tests and simple consumers."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[SctpEvent] = asyncio.Queue()

    def on_association_up(self, assoc: Association, inbound_streams: int,
                          outbound_streams: int) -> None:
        self.queue.put_nowait(SctpEvent("up", assoc, inbound_streams=inbound_streams,
                                        outbound_streams=outbound_streams))

    def on_message(self, assoc: Association, stream: int, ppid: int, data: bytes) -> None:
        self.queue.put_nowait(SctpEvent("message", assoc, stream=stream, ppid=ppid, data=data))

    def on_association_down(self, assoc: Association, reason: DownReason) -> None:
        self.queue.put_nowait(SctpEvent("down", assoc, reason=reason))

    async def get(self, kind: str | None = None, timeout: float = 5.0) -> SctpEvent:
        """The next event (of `kind`, dropping others before it) within `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.queue.get()
                if kind is None or event.kind == kind:
                    return event


class Channel(Protocol):
    """What an implementation provides per association (used by `Association` only)."""

    def send(self, stream: int, wire_ppid: int, data: bytes) -> None:
        """Queue one message; raise BlockingIOError if the send buffer is full."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


_ids = iter(range(1, sys.maxsize))


class Association:
    """One SCTP association: send on a stream with a PPID, close gracefully, or abort."""

    def __init__(self, channel: Channel, handler: SctpHandler, kind: TransportKind,
                 peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.id = next(_ids)
        self.kind: TransportKind = kind
        self.peer = peer
        self.local = local
        self.inbound_streams = 0
        self.outbound_streams = 0
        self.is_up = False
        self.down_reason: DownReason | None = None
        self._channel = channel
        self._handler = handler
        self._pending: deque[tuple[int, int, bytes]] = deque()
        self._closing = False
        self._shutdown_sent = False
        self.on_writable_wanted: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "up" if self.is_up else (self.down_reason or "new")
        return (f"<Association {self.id} {self.kind} {self.local[0]}:{self.local[1]} -> "
                f"{self.peer[0]}:{self.peer[1]} {state} in={self.inbound_streams} "
                f"out={self.outbound_streams}>")

    # -- API -----------------------------------------------------------------------------------

    def send(self, stream: int, ppid: int, data: bytes) -> None:
        """Send `data` as one message on `stream` with `ppid`. Never blocks: while the send
        buffer is full messages queue here (up to MAX_PENDING), in order."""
        if not self.is_up or self._closing:
            raise SctpError(f"association {self.id} is not up ({self.down_reason or 'closing'})")
        if not 0 <= stream < self.outbound_streams:
            raise ValueError(f"stream {stream} out of range: {self.outbound_streams} outbound "
                             f"streams negotiated")
        if not data:
            raise ValueError("SCTP messages cannot be empty")
        wire = ppid_to_wire(ppid)
        if self._pending:
            self._queue(stream, wire, bytes(data))
            return
        try:
            self._channel.send(stream, wire, bytes(data))
        except BlockingIOError:
            self._queue(stream, wire, bytes(data))

    def close(self) -> None:
        """Graceful shutdown (queued messages are sent first); the handler then sees
        `on_association_down(assoc, SHUTDOWN)`."""
        if not self.is_up or self._closing:
            return
        self._closing = True
        if not self._pending:
            self._shutdown()

    def abort(self) -> None:
        """Send ABORT now; the handler sees `on_association_down(assoc, ABORTED)` at once."""
        if not self.is_up:
            return
        self._pending.clear()
        self._channel.abort()
        self._down(DownReason.ABORTED)

    # -- for the implementations ---------------------------------------------------------------

    def _queue(self, stream: int, wire_ppid: int, data: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise SctpError(f"association {self.id}: send buffer full and {MAX_PENDING} "
                            f"messages queued")
        self._pending.append((stream, wire_ppid, data))
        if self.on_writable_wanted is not None:
            self.on_writable_wanted()

    def _writable(self) -> bool:
        """Flush queued messages; True when the queue is empty."""
        while self._pending and self.is_up:
            stream, wire, data = self._pending[0]
            try:
                self._channel.send(stream, wire, data)
            except BlockingIOError:
                return False
            self._pending.popleft()
        if self._closing and self.is_up:
            self._shutdown()
        return True

    def _shutdown(self) -> None:
        if not self._shutdown_sent:
            self._shutdown_sent = True
            self._channel.shutdown()

    def _up(self, inbound_streams: int, outbound_streams: int) -> None:
        if self.is_up or self.down_reason is not None:
            return
        self.is_up = True
        self.inbound_streams = inbound_streams
        self.outbound_streams = outbound_streams
        _call(self._handler.on_association_up, self, inbound_streams, outbound_streams)

    def _message(self, stream: int, wire_ppid: int, data: bytes) -> None:
        if self.is_up:
            _call(self._handler.on_message, self, stream, ppid_from_wire(wire_ppid), data)

    def _down(self, reason: DownReason) -> None:
        if self.down_reason is not None:
            return
        self.is_up = False
        self.down_reason = reason
        self._pending.clear()
        _call(self._handler.on_association_down, self, reason)


def _call(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("SCTP handler %s raised", getattr(fn, "__qualname__", fn))


class SctpServer(ABC):
    """A listening endpoint; accepted associations are reported to its handler."""

    host: str
    port: int

    @property
    @abstractmethod
    def associations(self) -> list[Association]:
        """The associations that are up."""

    @abstractmethod
    def close(self) -> None:
        """Stop listening and shut every association down gracefully."""


class SctpTransport(ABC):
    kind: TransportKind

    def __init__(self, config: SctpConfig | None = None) -> None:
        self.config = config or SctpConfig()

    @abstractmethod
    async def create_server(self, handler: SctpHandler, host: str = "0.0.0.0",
                            port: int = S1AP_PORT) -> SctpServer:
        """Listen on host:port (port 0: any free port, see `SctpServer.port`)."""

    @abstractmethod
    async def connect(self, handler: SctpHandler, host: str, port: int = S1AP_PORT, *,
                      local_host: str = "0.0.0.0", local_port: int = 0,
                      timeout: float | None = None) -> Association:
        """Open an association to host:port; returns it once up (the handler has already seen
        `on_association_up`). Raises ConnectionError if it cannot be established. A fixed
        `local_port` lets a restarted client reuse its address (the server sees RESTART)."""


def kernel_sctp_available() -> bool:
    """True when this kernel makes SCTP sockets (socket() fails with EPROTONOSUPPORT if not)."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    except OSError:
        return False
    s.close()
    return True


_announced: set[str] = set()


def open_transport(kind: Literal["auto", "kernel", "userspace"] = "auto",
                   config: SctpConfig | None = None) -> SctpTransport:
    """The SCTP transport to use: "kernel" (pysctp), "userspace" (usrsctp over UDP) or "auto"
    (kernel if this kernel has SCTP, else userspace). Logs the choice once per process."""
    chosen: str = kind
    if kind == "auto":
        chosen = "kernel" if kernel_sctp_available() else "userspace"
    transport: SctpTransport
    if chosen == "kernel":
        from services.enb.sctp_kernel import KernelTransport

        transport = KernelTransport(config)
        detail = "kernel SCTP via pysctp"
    elif chosen == "userspace":
        from services.enb.sctp_usrsctp import UsrsctpTransport

        transport = UsrsctpTransport(config)
        detail = "userspace SCTP (libusrsctp) over UDP encapsulation, RFC 6951"
    else:
        raise ValueError(f"unknown SCTP transport {kind!r}: auto, kernel or userspace")
    if chosen not in _announced:
        _announced.add(chosen)
        log.info("SCTP transport: %s%s", detail,
                 " (auto: this kernel has no SCTP)" if kind == "auto" and chosen == "userspace"
                 else "")
    return transport
