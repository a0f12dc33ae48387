"""Load relay.bpf.c, attach it to the relay's interfaces, and manage its `flows` map.

Layers:

- `XdpProgram`: the flows map and the loaded program (bpf() through ctypes, no libbpf), attached
  to interfaces through BPF links, native mode first and generic (skb) mode as the fallback.
  Closing it (or the process dying) detaches everything: no stale fast path outlives the relay.
- `XdpFastPath`: one-direction flows (maps.XdpFlow): `install(flow) -> bool`,
  `remove(flow_id)`, `counters() -> {flow_id: (packets, bytes)}`, `close()`. It resolves each
  flow's egress interface and next-hop MAC (neighbours.py) and refuses, by returning False, any
  flow it cannot forward, so that flow stays in userspace.
- media.py adapts that to the media relay's FastPath (both directions of a stream per flow).

Anything that makes the fast path impossible as a whole (no privilege, no clang, a driver or
interface that refuses XDP, a program the verifier rejects) raises `XdpUnavailable` from the
constructor, with the reason: the service logs it once and relays in userspace.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from services.media.xdp import bpf, build, elf, neighbours
from services.media.xdp.maps import (
    FLOW_F_ZERO_UDP_CSUM,
    KEY,
    VALUE,
    Endpoint,
    NextHop,
    XdpFlow,
    coerce_flow,
    pack_key,
    pack_value,
    unpack_counters,
)

log = logging.getLogger("volte.media.xdp")

PROGRAM_SECTION = "xdp"
MAP_NAME = "flows"
NATIVE, GENERIC, AUTO = "native", "generic", "auto"
MODES = (AUTO, NATIVE, GENERIC)
_FLAGS = {NATIVE: bpf.XDP_FLAGS_DRV_MODE, GENERIC: bpf.XDP_FLAGS_SKB_MODE}
_PRIVILEGE = (
    "the process needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN; "
    "kernel.unprivileged_bpf_disabled={})"
)


class XdpUnavailable(RuntimeError):
    """The XDP fast path cannot run here; str() is the reason, fit for one log line."""


def _unprivileged_setting() -> str:
    try:
        return Path("/proc/sys/kernel/unprivileged_bpf_disabled").read_text().strip()
    except OSError:
        return "?"


def _privilege_error(what: str) -> XdpUnavailable:
    return XdpUnavailable(f"{what} refused (EPERM): " + _PRIVILEGE.format(_unprivileged_setting()))


class XdpProgram:
    """The flows map plus the relay program, loaded, and the interfaces it is attached to."""

    def __init__(self, *, max_flows: int = 65536, object_path: Path | None = None) -> None:
        self.map_fd = -1
        self.prog_fd = -1
        self.modes: dict[str, str] = {}  # ifname -> NATIVE | GENERIC
        self.ifindexes: dict[str, int] = {}
        self._links: list[int] = []
        try:
            # First, so that an unprivileged process hears about privilege, not about clang.
            self.map_fd = bpf.map_create(
                bpf.MAP_TYPE_HASH, KEY.size, VALUE.size, max_flows, MAP_NAME
            )
        except bpf.BpfError as exc:
            if exc.errno == errno.EPERM:
                raise _privilege_error("bpf(BPF_MAP_CREATE)") from None
            raise XdpUnavailable(f"cannot create the flows map: {exc.strerror}") from None
        try:
            self._load(object_path)
        except BaseException:
            self.close()
            raise

    def _load(self, object_path: Path | None) -> None:
        try:
            path = object_path or build.object_path()
            obj = elf.parse(path.read_bytes())
        except build.BuildError as exc:
            raise XdpUnavailable(f"cannot build the XDP program: {exc}") from None
        except (OSError, elf.ElfError) as exc:
            raise XdpUnavailable(f"cannot read the XDP object: {exc}") from None
        program = obj.programs.get(PROGRAM_SECTION)
        if program is None:
            raise XdpUnavailable(f"the XDP object has no {PROGRAM_SECTION!r} section")
        try:
            insns = program.patched({MAP_NAME: self.map_fd})
            self.prog_fd = bpf.prog_load(
                bpf.PROG_TYPE_XDP, insns, obj.license, program.name, bpf.ATTACH_TYPE_XDP
            )
        except elf.ElfError as exc:
            raise XdpUnavailable(f"cannot link the XDP program: {exc}") from None
        except bpf.BpfError as exc:
            if exc.errno == errno.EPERM:
                raise _privilege_error("bpf(BPF_PROG_LOAD)") from None
            tail = " | ".join(exc.log.strip().splitlines()[-6:])
            raise XdpUnavailable(f"the verifier rejected the XDP program: {tail or exc}") from None

    def attach(self, ifname: str, mode: str = AUTO) -> str:
        """Attach to `ifname`: "native", "generic", or "auto" (native, else generic, with a
        warning; generic on a veth, see below). Returns the mode that is now active.

        A veth delivers frames sent by native XDP (XDP_TX, redirect) only if its peer runs NAPI:
        has an XDP program or GRO on. In a pod the peer is the host-side end, which the pod can
        neither see nor change, and a frame it refuses is dropped silently; so "auto" uses
        generic XDP on a veth, which sends an skb that always gets through. Say "native" where
        the peer is known to be ready (the tests attach a pass program to it).
        """
        if mode not in MODES:
            raise ValueError(f"XDP mode {mode!r}: expected one of {', '.join(MODES)}")
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise XdpUnavailable(f"no network interface named {ifname!r}") from None
        active = GENERIC if mode == GENERIC else NATIVE
        if mode == AUTO and neighbours.driver(ifname) == "veth":
            active = GENERIC
            log.info("%s is a veth: generic XDP (native needs XDP or GRO on its peer)", ifname)
        try:
            link = bpf.xdp_link_create(self.prog_fd, ifindex, _FLAGS[active])
        except bpf.BpfError as exc:
            error = self._attach_error(ifname, exc, active)
            fatal = exc.errno in (errno.EPERM, errno.EBUSY, errno.EEXIST)
            if mode != AUTO or fatal or active == GENERIC:
                raise error from None
            try:
                link = bpf.xdp_link_create(self.prog_fd, ifindex, _FLAGS[GENERIC])
            except bpf.BpfError as exc2:
                raise self._attach_error(ifname, exc2, GENERIC) from None
            active = GENERIC
            log.warning("%s; using generic (skb) XDP on %s, which is slower", error, ifname)
        self._links.append(link)
        self.modes[ifname] = active
        self.ifindexes[ifname] = ifindex
        return active

    @staticmethod
    def _attach_error(ifname: str, exc: bpf.BpfError, mode: str) -> XdpUnavailable:
        if exc.errno == errno.EPERM:
            return _privilege_error(f"attaching XDP to {ifname}")
        if exc.errno in (errno.EBUSY, errno.EEXIST):
            return XdpUnavailable(
                f"{ifname} already has an XDP program (another relay, or `ip link set dev "
                f"{ifname} xdp ...`): detach it first"
            )
        if exc.errno == errno.EOPNOTSUPP:
            return XdpUnavailable(f"the driver of {ifname} does not support {mode} XDP")
        if exc.errno == errno.EINVAL:
            return XdpUnavailable(
                f"{mode} XDP refused on {ifname} (EINVAL: MTU too large for XDP, or the "
                "driver lacks the queues/features it needs)"
            )
        return XdpUnavailable(f"{mode} XDP refused on {ifname}: {exc.strerror}")

    def update(self, key: bytes, value: bytes) -> None:
        bpf.map_update(self.map_fd, key, value)

    def lookup(self, key: bytes) -> bytes | None:
        return bpf.map_lookup(self.map_fd, key, VALUE.size)

    def delete(self, key: bytes) -> bool:
        return bpf.map_delete(self.map_fd, key)

    def flow_keys(self) -> list[bytes]:
        return bpf.map_keys(self.map_fd, KEY.size)

    def test_run(self, packet: bytes, ingress_ifindex: int = 0) -> bpf.RunResult:
        """Run the program on one packet without sending anything (BPF_PROG_RUN)."""
        return bpf.prog_test_run(self.prog_fd, packet, ingress_ifindex)

    def close(self) -> None:
        """Detach from every interface and free the program and map. Idempotent."""
        for fd in [*self._links, self.prog_fd, self.map_fd]:
            if fd >= 0:
                os.close(fd)
        self._links.clear()
        self.modes.clear()
        self.ifindexes.clear()
        self.prog_fd = self.map_fd = -1


class XdpFastPath:
    """The media relay's kernel fast path on `interfaces` (all that relayed packets arrive on
    or leave from: a flow whose egress interface is not among them stays in userspace).

    Raises XdpUnavailable if it cannot be had at all. `mode` is "auto" (native XDP, else
    generic with a warning; generic on a veth, see XdpProgram.attach), "native" or "generic";
    the `mode` property says what is active: "native", "generic", or "mixed".

    `install()` never blocks on the network: when the next hop's MAC is not in the neighbour
    table yet, it asks the kernel to resolve it, returns True, and puts the flow into the map
    on a later call (every `counters()` call retries); until then packets simply reach the
    userspace relay. `resolve_timeout` > 0 waits that long in install() instead.

    UDP checksums are updated incrementally (the receiver still verifies the payload end to
    end). `zero_ipv4_udp_checksum=True` sends IPv4 flows with a zero UDP checksum instead: use
    it where senders on the same host reach the relay over a veth with checksum offload on
    (their packets carry a partial checksum that XDP cannot finish). IPv6 always updates.
    """

    def __init__(
        self,
        interfaces: Iterable[str],
        *,
        mode: str = AUTO,
        max_flows: int = 65536,
        resolve_timeout: float = 0.0,
        zero_ipv4_udp_checksum: bool = False,
        object_path: Path | None = None,
    ) -> None:
        names: Sequence[str] = list(dict.fromkeys(interfaces))
        if not names:
            raise XdpUnavailable("no interfaces to attach XDP to")
        for name in names:
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise XdpUnavailable(f"no network interface named {name!r}") from None
            try:
                neighbours.interface_mac(name)
            except neighbours.NextHopError as exc:
                raise XdpUnavailable(f"{exc}: the XDP relay rewrites Ethernet frames") from None
        self._resolve_timeout = resolve_timeout
        self._zero_ipv4_csum = zero_ipv4_udp_checksum
        self._flows: dict[Hashable, bytes] = {}  # flow id -> key, for flows in the map
        self._owners: dict[bytes, Hashable] = {}  # key -> flow id
        self._pending: dict[Hashable, tuple[XdpFlow, neighbours.Egress]] = {}
        self._program = XdpProgram(max_flows=max_flows, object_path=object_path)
        try:
            for name in names:
                self._program.attach(name, mode)
        except BaseException:
            self._program.close()
            raise
        log.info(
            "XDP fast path on %s",
            ", ".join(f"{n} ({m})" for n, m in self._program.modes.items()),
        )

    @property
    def modes(self) -> dict[str, str]:
        return dict(self._program.modes)

    @property
    def mode(self) -> str:
        modes = set(self._program.modes.values())
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def program(self) -> XdpProgram:
        return self._program

    @property
    def pending(self) -> set[Hashable]:
        """Flows taken but not in the kernel yet: their next hop is being resolved."""
        return set(self._pending)

    def install(self, flow: object) -> bool:
        """Relay `flow` in the kernel (once its next hop is resolved); False, and it stays in
        userspace, if its peer is not reachable through an attached Ethernet interface or the
        map is full. Installing a flow id again replaces it (a re-latch)."""
        f: XdpFlow = coerce_flow(flow)
        if self._program.prog_fd < 0:
            return False
        try:
            out = neighbours.egress(f.peer.ip, f.local_tx.ip)
            if out.ifindex not in self._program.ifindexes.values():
                raise neighbours.NextHopError(f"egress interface {out.ifname} has no XDP program")
            if f.local_tx.ip.is_unspecified:
                if out.prefsrc is None:
                    raise neighbours.NextHopError(f"no source address toward {f.peer.ip}")
                f = replace(f, local_tx=Endpoint(out.prefsrc, f.local_tx.port))
            mac = neighbours.neighbour_mac(out)
            if mac is None:
                neighbours.provoke(f.peer.ip, f.local_tx.ip)
                deadline = time.monotonic() + self._resolve_timeout
                while mac is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                    mac = neighbours.neighbour_mac(out)
        except neighbours.NextHopError as exc:
            log.info("flow %r stays in userspace: %s", f.id, exc)
            return False
        if mac is None:
            self._forget(f.id, delete=True)
            self._pending[f.id] = (f, out)
            log.info("flow %r waits for next hop %s on %s to resolve", f.id, out.via, out.ifname)
            return True
        return self._put(f, neighbours.next_hop(out, mac))

    def _put(self, f: XdpFlow, hop: NextHop) -> bool:
        key = pack_key(f.local_rx)
        packets = nbytes = 0
        previous = self._flows.get(f.id)
        if previous == key:  # re-latched: keep counting where it left off
            old = self._program.lookup(key)
            if old is not None:
                packets, nbytes = unpack_counters(old)
        flags = FLOW_F_ZERO_UDP_CSUM if self._zero_ipv4_csum and f.family == 4 else 0
        try:
            self._program.update(key, pack_value(f, hop, packets, nbytes, flags))
        except bpf.BpfError as exc:
            log.warning("flow %r stays in userspace: map update failed: %s", f.id, exc.strerror)
            self._pending.pop(f.id, None)
            return False
        self._pending.pop(f.id, None)
        if previous is not None and previous != key:
            self._forget(f.id, delete=True)
        other = self._owners.get(key)
        if other is not None and other != f.id:
            self._forget(other, delete=False)  # the same relay port now belongs to this flow
        self._flows[f.id] = key
        self._owners[key] = f.id
        log.debug("flow %r in XDP: %s -> %s via %s", f.id, f.local_rx, f.peer, hop.ifname)
        return True

    def retry_pending(self) -> None:
        """Put flows whose next hop has resolved since into the kernel."""
        for f, out in list(self._pending.values()):
            try:
                mac = neighbours.neighbour_mac(out)
            except neighbours.NextHopError:
                continue
            if mac is not None:
                self._put(f, neighbours.next_hop(out, mac))

    def _forget(self, flow_id: Hashable, *, delete: bool) -> None:
        self._pending.pop(flow_id, None)
        key = self._flows.pop(flow_id, None)
        if key is None:
            return
        self._owners.pop(key, None)
        if delete and self._program.map_fd >= 0:
            self._program.delete(key)

    def remove(self, flow_id: Hashable) -> None:
        """Stop relaying `flow_id` in the kernel (its packets go to userspace again). Read its
        counters() first if the totals matter: they go with the map entry."""
        self._forget(flow_id, delete=True)

    def counters(self) -> dict[Hashable, tuple[int, int]]:
        """(packets, UDP payload bytes) relayed in the kernel, per flow in the map (pending
        flows are retried first)."""
        out: dict[Hashable, tuple[int, int]] = {}
        if self._program.map_fd < 0:
            return out
        if self._pending:
            self.retry_pending()
        for flow_id, key in self._flows.items():
            raw = self._program.lookup(key)
            if raw is not None:
                out[flow_id] = unpack_counters(raw)
        return out

    def close(self) -> None:
        """Detach from every interface; all flows fall back to userspace. Idempotent."""
        self._flows.clear()
        self._owners.clear()
        self._pending.clear()
        self._program.close()

    def __enter__(self) -> XdpFastPath:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
