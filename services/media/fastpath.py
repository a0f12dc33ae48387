"""The kernel fast path interface: what the relay asks of an XDP (or any other) forwarder.

The relay forwards every packet in userspace until both directions of a stream are latched
(it knows the real source of each leg). Then it describes the stream as a `Flow` and calls
`install(flow)`; an implementation that takes the flow forwards matching packets itself from
then on and reports what it forwarded through `counters()`. The relay calls `remove(flow)`
when the flow is no longer valid: a leg re-latched onto a new source (the relay then installs a
new flow with a new id), the stream was disabled, or the session was deleted.

A flow covers both directions of one RTP stream. For each direction, the forwarder:
- matches UDP datagrams arriving at `local_in` (the relay's own socket address) from `source`
  (the latched remote address) -- anything else, including packets from a new source, MUST
  go up the normal stack (XDP_PASS) so userspace sees it and can re-latch;
- sends the datagram unchanged from `local_out` to `destination` (rewriting the IP/UDP
  addresses and checksums; the RTP payload is never touched).
RTCP on its own port stays in userspace. On an rtcp-mux stream RTCP shares the RTP port; the
forwarder may relay it (the relay then simply sees fewer RTCP packets) or pass it up.

Contract:
- `install(flow) -> bool`: True when the forwarder took the flow; False when it declines
  (table full, unsupported address family): the relay keeps forwarding that stream itself.
- `remove(flow)`: stop forwarding; packets go to userspace again. Unknown flows are ignored.
- `counters()`: {flow id: FlowCounters} with packets and bytes forwarded per direction,
  cumulative since install; flows not listed have forwarded nothing. Polled about once a
  second (it keeps the relay's stats and inactivity timer up to date) and once before remove.
- `close()`: detach; called once at shutdown.
Calls come from the relay's event loop thread, must not block for long, and may raise: the
relay logs the first failure of each kind and carries on in userspace (see `Guarded`).

Where the implementation comes from (`load("xdp", options)`): `services.media.xdp`, either
- `create(options: FastPathOptions) -> FastPath`, raising when it cannot attach; or
- (what that package offers today) `XdpFastPath(interfaces)`, whose flows are one direction
  each (`install(one-way flow) -> bool`, `remove(flow_id)`, `counters() -> {flow_id: (packets,
  bytes)}`): `OneWayAdapter` installs each `Flow` as two one-way flows with ids
  (flow.id, "a_to_b") and (flow.id, "b_to_a"), each with the `Direction` fields (local_in,
  source, local_out, destination) plus that id.
Whatever goes wrong there is logged once and the relay runs with `UserspaceOnly`.
"""

from __future__ import annotations

import fcntl
import importlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from services.media.events import Address

log = logging.getLogger("volte.media.fastpath")

KINDS = ("userspace", "xdp")
_SIOCGIFADDR = 0x8915  # ioctl: an IPv4 interface's address


@dataclass(frozen=True, slots=True)
class Direction:
    local_in: Address  # relay socket the packets arrive at
    source: Address  # the latched sender; packets from elsewhere are not this flow's
    local_out: Address  # relay socket they leave from (what the receiver latched onto)
    destination: Address  # where they go


@dataclass(frozen=True, slots=True)
class Flow:
    id: int  # unique for the life of the process; a re-latch gives a new flow and id
    a_to_b: Direction  # caller -> callee
    b_to_a: Direction  # callee -> caller


@dataclass(frozen=True, slots=True)
class Counters:
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class FlowCounters:
    a_to_b: Counters = Counters()
    b_to_a: Counters = Counters()


@runtime_checkable
class FastPath(Protocol):
    name: str

    def install(self, flow: Flow) -> bool: ...

    def remove(self, flow: Flow) -> None: ...

    def counters(self) -> Mapping[int, FlowCounters]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FastPathOptions:
    interface: str  # network interface to attach to ("" : the one holding `bind`)
    bind: str  # the relay sockets' local address
    port_min: int  # the relay port range, for a program that filters on it
    port_max: int


class FastPathUnavailable(RuntimeError):
    """The fast path cannot run here (no XDP support, no privilege, no such interface)."""


class UserspaceOnly:
    """No fast path: every packet is relayed in userspace."""

    name = "userspace"

    def install(self, flow: Flow) -> bool:
        return False

    def remove(self, flow: Flow) -> None:
        pass

    def counters(self) -> Mapping[int, FlowCounters]:
        return {}

    def close(self) -> None:
        pass


class Guarded:
    """Wraps an implementation so that its failures never reach the packet path: an exception
    is logged the first time each operation fails and then treated as "not installed" /
    "no counters"."""

    def __init__(self, inner: FastPath) -> None:
        self.inner = inner
        self.name = inner.name
        self._failed: set[str] = set()

    def _fail(self, operation: str, exc: Exception) -> None:
        if operation not in self._failed:
            self._failed.add(operation)
            log.warning(
                "fast path %s %s failed (%s); those streams stay in userspace",
                self.name, operation, exc, exc_info=True,
            )

    def install(self, flow: Flow) -> bool:
        try:
            return bool(self.inner.install(flow))
        except Exception as exc:
            self._fail("install", exc)
            return False

    def remove(self, flow: Flow) -> None:
        try:
            self.inner.remove(flow)
        except Exception as exc:
            self._fail("remove", exc)

    def counters(self) -> Mapping[int, FlowCounters]:
        try:
            return self.inner.counters()
        except Exception as exc:
            self._fail("counters", exc)
            return {}

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as exc:
            self._fail("close", exc)


def guarded(fastpath: FastPath) -> FastPath:
    if isinstance(fastpath, Guarded | UserspaceOnly):
        return fastpath
    return Guarded(fastpath)


@dataclass(frozen=True, slots=True)
class OneWayFlow:
    """One direction of a Flow, for implementations that take one direction at a time."""

    id: tuple[int, str]
    local_in: Address
    source: Address
    local_out: Address
    destination: Address

    @classmethod
    def of(cls, flow: Flow, which: str) -> OneWayFlow:
        d: Direction = getattr(flow, which)
        return cls((flow.id, which), d.local_in, d.source, d.local_out, d.destination)


class OneWayAdapter:
    """FastPath over an implementation whose flows are one direction each (see the module
    docstring): a Flow is installed as both of its directions or not at all."""

    def __init__(self, inner: Any, name: str = "xdp") -> None:
        self.inner = inner
        self.name = name

    def install(self, flow: Flow) -> bool:
        forward, backward = OneWayFlow.of(flow, "a_to_b"), OneWayFlow.of(flow, "b_to_a")
        if not self.inner.install(forward):
            return False
        if not self.inner.install(backward):
            self.inner.remove(forward.id)
            return False
        return True

    def remove(self, flow: Flow) -> None:
        for which in ("a_to_b", "b_to_a"):
            self.inner.remove((flow.id, which))

    def counters(self) -> Mapping[int, FlowCounters]:
        per_direction: dict[int, dict[str, Counters]] = {}
        for key, value in dict(self.inner.counters()).items():
            if isinstance(key, tuple) and len(key) == 2:
                packets, size = value
                per_direction.setdefault(key[0], {})[key[1]] = Counters(int(packets), int(size))
        return {
            flow_id: FlowCounters(d.get("a_to_b", Counters()), d.get("b_to_a", Counters()))
            for flow_id, d in per_direction.items()
        }

    def close(self) -> None:
        self.inner.close()


def interface_for(ip: str) -> str | None:
    """The name of the local interface that holds address `ip`, if any."""
    address = ipaddress.ip_address(ip)
    if address.version == 6:
        try:
            lines = Path("/proc/net/if_inet6").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) >= 6 and ipaddress.ip_address(bytes.fromhex(fields[0])) == address:
                return fields[5]
        return None
    for _, name in socket.if_nameindex():
        request = struct.pack("256s", name.encode()[:15])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue
        if socket.inet_ntoa(reply[20:24]) == ip:
            return name
    return None


def _create_xdp(options: FastPathOptions) -> FastPath:
    module = importlib.import_module("services.media.xdp")
    create = getattr(module, "create", None)
    if create is not None:
        implementation: FastPath = create(options)
        return implementation
    if not hasattr(module, "XdpFastPath"):
        raise FastPathUnavailable("services.media.xdp has neither create() nor XdpFastPath")
    interface = options.interface or interface_for(options.bind)
    if not interface:
        raise FastPathUnavailable(f"no interface holds {options.bind}: set --interface")
    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise FastPathUnavailable(f"no network interface named {interface!r}") from None
    return OneWayAdapter(module.XdpFastPath([interface]))


def load(kind: str, options: FastPathOptions) -> FastPath:
    """The fast path asked for, or UserspaceOnly (with one warning) when it cannot run."""
    if kind == "userspace":
        return UserspaceOnly()
    if kind != "xdp":
        raise ValueError(f"unknown fast path {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        implementation = _create_xdp(options)
    except ModuleNotFoundError as exc:
        reason = (
            "no XDP implementation in this build (services.media.xdp)"
            if exc.name == "services.media.xdp"
            else f"cannot import it ({exc})"
        )
        log.warning("XDP fast path unavailable: %s; relaying in userspace", reason)
        return UserspaceOnly()
    except Exception as exc:
        log.warning("XDP fast path unavailable: %s; relaying in userspace", exc)
        return UserspaceOnly()
    log.info("XDP fast path attached", extra={"interface": options.interface})
    return guarded(implementation)
