"""Relay ports: UDP sockets bound on the relay address, handed out from a configured range.

`PortPool` is the shell's `PortSource` (see relay.py): `allocate(2)` binds an even/odd pair
(RTP on the even port, RTCP on the next), `allocate(1)` a single port (rtcp-mux). Ports held by
another process are skipped, so two instances (or a test) may share a range. The search starts
where the last one ended, so a port just freed is not handed out again at once and stray late
packets of the previous call do not land in the next one.

Sockets are bound synchronously (the core asks for ports in the middle of an update) and turned
into asyncio datagram endpoints afterwards by `activate()`; until then the kernel queues what
arrives. No SO_REUSEADDR: on Linux it would let two sockets share a UDP port.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence

from services.media.relay import PortsExhausted

# Errors that mean "this port, not the address": try the next one.
_PORT_TAKEN = (errno.EADDRINUSE, errno.EACCES)


class PortPool:
    def __init__(self, bind: str, port_min: int, port_max: int) -> None:
        if not 1 <= port_min < port_max <= 65535:
            raise ValueError(f"port range {port_min}-{port_max}: need 1 <= min < max <= 65535")
        self.bind = bind
        self.family = (
            socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
        )
        self.port_min = port_min
        self.port_max = port_max
        self._next = port_min
        self.sockets: dict[int, socket.socket] = {}  # bound, not yet activated
        self.transports: dict[int, asyncio.DatagramTransport] = {}
        self._activating: dict[int, socket.socket] = {}  # activate() is setting them up

    def __len__(self) -> int:
        return len(self.sockets) + len(self.transports) + len(self._activating)

    def __contains__(self, port: object) -> bool:
        return port in self.sockets or port in self.transports or port in self._activating

    def _candidates(self, count: int) -> Iterator[int]:
        """Ports (pair: even bases) in the range, starting at the cursor and wrapping once."""
        step = 2 if count == 2 else 1
        first = self.port_min + (self.port_min % 2 if count == 2 else 0)
        last = self.port_max - (count - 1)
        if last < first:
            return
        slots = (last - first) // step + 1
        start = max(0, (self._next - first + step - 1) // step) % slots
        for i in range(slots):
            yield first + ((start + i) % slots) * step

    def _bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.bind((self.bind, port))
        except OSError as exc:
            sock.close()
            if exc.errno in _PORT_TAKEN:
                return None
            raise  # e.g. EADDRNOTAVAIL: the bind address is not on this host
        sock.setblocking(False)
        return sock

    def allocate(self, count: int) -> tuple[int, ...]:
        if count not in (1, 2):
            raise ValueError(f"allocate {count} ports: 1 or 2")
        for base in self._candidates(count):
            ports = tuple(range(base, base + count))
            if any(p in self for p in ports):
                continue
            bound: list[socket.socket] = []
            for p in ports:
                sock = self._bind(p)
                if sock is None:
                    break
                bound.append(sock)
            if len(bound) < count:
                for sock in bound:
                    sock.close()
                continue
            for p, sock in zip(ports, bound, strict=True):
                self.sockets[p] = sock
            self._next = base + count
            return ports
        kind = "an even/odd port pair" if count == 2 else "a port"
        raise PortsExhausted(
            f"no free relay port: cannot bind {kind} in {self.port_min}-{self.port_max} "
            f"on {self.bind} ({len(self)} in use by this instance)"
        )

    def release(self, ports: Sequence[int]) -> None:
        for p in ports:
            transport = self.transports.pop(p, None)
            if transport is not None:
                transport.close()
            sock = self.sockets.pop(p, None)
            if sock is not None:
                sock.close()
            # One being activated: activate() closes its transport when it is set up.
            self._activating.pop(p, None)

    async def activate(self, protocol: Callable[[int], asyncio.DatagramProtocol]) -> None:
        """Start receiving on the sockets bound since the last call."""
        loop = asyncio.get_running_loop()
        while self.sockets:
            port, sock = self.sockets.popitem()
            self._activating[port] = sock
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(protocol, port), sock=sock
                )
            except BaseException:
                if self._activating.pop(port, None) is sock:
                    sock.close()
                raise
            if self._activating.pop(port, None) is sock:
                self.transports[port] = transport
            else:  # released while the endpoint was being set up
                transport.close()

    def send(self, port: int, data: bytes, destination: tuple[str, int]) -> bool:
        """Send from relay port `port`; False when it is gone or the kernel refused."""
        transport = self.transports.get(port)
        if transport is not None:
            transport.sendto(data, destination)
            return True
        # Bound by an update whose activate() has not finished yet: send from the socket.
        sock = self.sockets.get(port) or self._activating.get(port)
        if sock is None:
            return False
        try:
            sock.sendto(data, destination)
        except OSError:
            return False
        return True

    def probe(self) -> str | None:
        """None when a port pair can be bound now (health), else why not."""
        try:
            ports = self.allocate(2)
        except (PortsExhausted, OSError) as exc:
            return str(exc)
        self.release(ports)
        return None

    def close(self) -> None:
        self.release([*self.sockets, *self.transports, *self._activating])
