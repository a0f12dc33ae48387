"""The bpf(2) system call through ctypes: the handful of commands the XDP fast path uses.

No libbpf, no bpftool: map create/lookup/update/delete, program load (with the verifier log on
failure), XDP attach through a BPF link (BPF_LINK_CREATE, Linux 5.9+), and BPF_PROG_RUN for
running the program on a made-up packet. Every fd returned is owned by the caller (os.close).

A BPF link detaches the program when its last fd closes, so a relay that dies leaves no stale
program forwarding packets for calls it no longer knows about.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

# bpf(2) syscall numbers; the command numbers and attr layouts are the kernel's stable UAPI.
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
PROG_TEST_RUN = 10
LINK_CREATE = 28

MAP_TYPE_HASH = 1
PROG_TYPE_XDP = 6
ATTACH_TYPE_XDP = 37  # enum bpf_attach_type BPF_XDP

ANY = 0  # BPF_ANY: create or update

XDP_FLAGS_SKB_MODE = 1 << 1  # generic XDP: runs on the skb, after the driver
XDP_FLAGS_DRV_MODE = 1 << 2  # native XDP: runs in the driver's receive path

# XDP verdicts (enum xdp_action)
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

_ATTR_SIZE = 160  # larger than any attr used here; the kernel wants the unused tail zeroed
_OBJ_NAME_LEN = 16


class BpfError(OSError):
    """A bpf() command failed; errno is set, and `log` holds the verifier's output if any."""

    def __init__(self, command: str, err: int, log: str = "") -> None:
        super().__init__(err, f"bpf({command}): {os.strerror(err)}")
        self.command = command
        self.log = log


_libc: ctypes.CDLL | None = None


def _syscall() -> tuple[ctypes.CDLL, int]:
    global _libc
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError("probe", errno.ENOSYS)
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc, number


def _bpf(command: str, cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    libc, number = _syscall()
    size = ctypes.c_uint(len(attr))
    ret = int(libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), attr, size))
    if ret < 0:
        raise BpfError(command, ctypes.get_errno())
    return ret


def _attr(fmt: str, *values: object) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def _name(name: str) -> bytes:
    return name.encode()[: _OBJ_NAME_LEN - 1]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name
    attr = _attr("=7I16s", map_type, key_size, value_size, max_entries, 0, 0, 0, _name(name))
    return _bpf("MAP_CREATE", MAP_CREATE, attr)


def _elem_attr(
    map_fd: int,
    key: ctypes.Array[ctypes.c_char],
    value: ctypes.Array[ctypes.c_char] | None,
    flags: int,
) -> ctypes.Array[ctypes.c_char]:
    # map_fd (u32, padded to 8), key ptr, value/next_key ptr, flags
    return _attr("=I4xQQQ", map_fd, _addr(key), _addr(value), flags)


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value for `key`, or None if it is not in the map."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf("MAP_LOOKUP_ELEM", MAP_LOOKUP_ELEM, _elem_attr(map_fd, k, v, 0))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf("MAP_UPDATE_ELEM", MAP_UPDATE_ELEM, _elem_attr(map_fd, k, v, flags))


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete `key`; False if it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf("MAP_DELETE_ELEM", MAP_DELETE_ELEM, _elem_attr(map_fd, k, None, 0))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key in the map (a snapshot; fine for the few thousand entries of a relay)."""
    keys: list[bytes] = []
    nxt = ctypes.create_string_buffer(key_size)
    cur: ctypes.Array[ctypes.c_char] | None = None
    while True:
        attr = _attr("=I4xQQQ", map_fd, _addr(cur), _addr(nxt), 0)
        try:
            _bpf("MAP_GET_NEXT_KEY", MAP_GET_NEXT_KEY, attr)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return keys
            raise
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str,
    name: str,
    expected_attach_type: int = 0,
    log_size: int = 1 << 20,
) -> int:
    """Load a program; on a verifier rejection, retry once with the log on so it can be shown."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())  # NUL-terminated

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
        # prog_flags, prog_name, prog_ifindex, expected_attach_type
        attr = _attr(
            "=IIQQIIQII16sII",
            prog_type,
            len(insns) // 8,
            _addr(code),
            _addr(lic),
            1 if log is not None else 0,
            len(log) if log is not None else 0,
            _addr(log),
            0,
            0,
            _name(name),
            0,
            expected_attach_type,
        )
        return _bpf("PROG_LOAD", PROG_LOAD, attr)

    try:
        return attempt(None)
    except BpfError as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL):
            raise
    log = ctypes.create_string_buffer(log_size)
    try:
        return attempt(log)
    except BpfError as exc:
        text = log.value.decode(errors="replace")
        raise BpfError("PROG_LOAD", exc.errno or errno.EINVAL, text) from None


def xdp_link_create(prog_fd: int, ifindex: int, xdp_flags: int) -> int:
    """Attach an XDP program to `ifindex` through a BPF link; closing the fd detaches it."""
    attr = _attr("=4I", prog_fd, ifindex, ATTACH_TYPE_XDP, xdp_flags)
    return _bpf("LINK_CREATE", LINK_CREATE, attr)


@dataclass(frozen=True, slots=True)
class RunResult:
    verdict: int
    packet: bytes


def prog_test_run(prog_fd: int, packet: bytes, ingress_ifindex: int = 0) -> RunResult:
    """Run an XDP program once on `packet` (BPF_PROG_RUN): its verdict and the packet after it.

    Nothing is transmitted: XDP_TX and XDP_REDIRECT only come back as verdicts. With
    `ingress_ifindex` the program sees that interface as the one the packet arrived on.
    """
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    ctx: ctypes.Array[ctypes.c_char] | None = None
    if ingress_ifindex:
        # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        md = struct.pack("=6I", 0, len(packet), 0, ingress_ifindex, 0, 0)
        ctx = ctypes.create_string_buffer(md, len(md))
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration,
    # ctx_size_in, ctx_size_out, ctx_in, ctx_out
    attr = _attr(
        "=IIIIQQIIIIQQ",
        prog_fd,
        0,
        len(packet),
        len(data_out),
        _addr(data_in),
        _addr(data_out),
        1,
        0,
        len(ctx) if ctx is not None else 0,
        0,
        _addr(ctx),
        0,
    )
    _bpf("PROG_TEST_RUN", PROG_TEST_RUN, attr)
    retval, _, size_out = struct.unpack_from("=III", attr, 4)
    return RunResult(retval, data_out.raw[:size_out])
