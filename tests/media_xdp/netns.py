"""Network namespaces joined by veth pairs, for the XDP tests: several hosts on one machine.

`Netns.enter()` moves the calling thread into the namespace for a `with` block (setns(2)), so
sockets, interface lookups and `ip` subprocesses made inside it live there; the test process
itself stays single-threaded while it does so.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ip("-n", self.name, *args, check=check)

    @contextlib.contextmanager
    def enter(self) -> Iterator[None]:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def delete(self) -> None:
        ip("netns", "delete", self.name, check=False)


def unique_prefix() -> str:
    return f"vxdp{secrets.token_hex(3)}"


def veth(a: Netns, a_name: str, b: Netns, b_name: str) -> None:
    ip("link", "add", a_name, "netns", a.name, "type", "veth", "peer", "name", b_name,
       "netns", b.name)  # fmt: skip
    a.ip("link", "set", a_name, "up")
    b.ip("link", "set", b_name, "up")


def tx_checksum_off(ifname: str) -> None:
    """`ethtool -K IF tx off` for the current namespace, through the ethtool ioctl.

    A socket sending over a veth with checksum offload leaves a partial checksum in the packet
    (CHECKSUM_PARTIAL: the pseudo-header sum, finished by "the hardware"); native XDP on the
    other end sees those bytes and, forwarding the frame, drops the skb that knew it was
    partial. Packets from a real NIC carry finished checksums, which is what this makes.
    """
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, 0), 8)
    ifreq = struct.pack("=16sQ16x", ifname.encode(), ctypes.addressof(value))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
