"""Test helpers: free UDP port ranges and a tiny UA that sends and receives datagrams."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

from volte.v1 import common_pb2


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_udp_range(n: int) -> int:
    """An even port p with p .. p+n-1 free for UDP on loopback, below the ephemeral range (so
    the kernel does not hand them to other sockets meanwhile) and the default relay range."""
    for _ in range(500):
        base = random.randrange(20000, 29990 - n, 2)
        if all(_udp_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free UDP port range")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))


class Ua:
    """One UDP socket of a simulated UA on loopback."""

    def __init__(self, transport: asyncio.DatagramTransport, inbox: _Inbox) -> None:
        self.transport = transport
        self.inbox = inbox
        self.address: tuple[str, int] = transport.get_extra_info("sockname")[:2]

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> Ua:
        loop = asyncio.get_running_loop()
        transport, inbox = await loop.create_datagram_endpoint(_Inbox, local_addr=(host, 0))
        return cls(transport, inbox)

    @property
    def sdp(self) -> common_pb2.SocketAddress:
        return common_pb2.SocketAddress(ip=self.address[0], port=self.address[1])

    def send(self, data: bytes, to: common_pb2.SocketAddress | tuple[str, int]) -> None:
        if isinstance(to, common_pb2.SocketAddress):
            to = (to.ip, to.port)
        self.transport.sendto(data, to)

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.inbox.queue.get(), timeout)

    async def recv_n(self, n: int, timeout: float = 3.0) -> list[tuple[bytes, tuple[str, int]]]:
        out: list[tuple[bytes, tuple[str, int]]] = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                out.append(await self.inbox.queue.get())
        return out

    def pending(self) -> int:
        return self.inbox.queue.qsize()

    def close(self) -> None:
        self.transport.close()
