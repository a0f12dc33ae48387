"""Traffic helpers for the XDP tests: addresses of the topology, sockets, bounded receives."""

from __future__ import annotations

import select
import socket
import time

from tests.media_xdp.netns import Netns

Addr = tuple[str, int]

V4 = {"a": "10.200.1.2", "r1": "10.200.1.1", "r2": "10.200.2.1", "b": "10.200.2.2"}
V6 = {"a": "fd00:200:1::2", "r1": "fd00:200:1::1", "r2": "fd00:200:2::1", "b": "fd00:200:2::2"}


def udp(ns: Netns, addr: Addr) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with ns.enter():
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind(addr)
    return s


def receive(sock: socket.socket, count: int, timeout: float = 2.0) -> list[tuple[bytes, Addr]]:
    got: list[tuple[bytes, Addr]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(4096)
        got.append((data, (addr[0], addr[1])))
    return got


def silent(sock: socket.socket, wait: float = 0.2) -> list[bytes]:
    """Whatever reaches `sock` within `wait` seconds (the test wants nothing)."""
    return [data for data, _ in receive(sock, 1000, wait)]
