"""SCTP transport for the eNB agent (services/enb/sctp*.py), over both implementations.

Every test taking `kind` runs over the userspace transport (usrsctp over UDP) here on the host,
and over kernel SCTP wherever the kernel has it. This host's kernel does not, so the kernel
variants (marked `kernel_sctp`) are not even generated here: `test_kernel_suite_in_uml_guest`
boots a user-mode-linux guest (tests/enb/uml), runs `pytest -m kernel_sctp` on this file inside
it with dumpcap capturing the guest's loopback, asserts that suite passed in full, and checks
with tshark that the capture is SCTP carrying PPID 18 DATA chunks on several streams.

Association parameters are shrunk (`FAST`) so that heartbeat-based loss detection takes about a
second; `FAST.loss_detection_bound()` is the bound the loss tests hold the transports to.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.enb import sctp_usrsctp
from services.enb.sctp import (
    S1AP_PPID,
    Association,
    DownReason,
    EventQueue,
    SctpConfig,
    SctpError,
    SctpEvent,
    SctpServer,
    SctpTransport,
    kernel_sctp_available,
    open_transport,
    ppid_from_wire,
    ppid_to_wire,
)
from tests.enb.uml import capture_in_guest, pytest_argv, uml_binary

FAST = SctpConfig(
    streams=8,
    heartbeat_interval=0.2,
    rto_initial=0.1,
    rto_min=0.1,
    rto_max=0.2,
    max_retrans=2,
    max_init_attempts=2,
    max_init_timeout=0.3,
)
KERNEL = kernel_sctp_available()
IN_GUEST = os.environ.get("VOLTE_IN_UML_GUEST") == "1"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kind" in metafunc.fixturenames:
        kinds = [pytest.param("userspace", id="userspace")]
        if KERNEL:
            kinds.append(pytest.param("kernel", id="kernel", marks=pytest.mark.kernel_sctp))
        metafunc.parametrize("kind", kinds)


class Env:
    """A transport plus everything a test opened on it, torn down at the end."""

    def __init__(self, kind: str, config: SctpConfig = FAST) -> None:
        self.kind = kind
        self.transport: SctpTransport = open_transport(kind, config)  # type: ignore[arg-type]
        self.servers: list[SctpServer] = []
        self.clients: list[Association] = []
        self.blackholed: list[int] = []

    async def server(self, config: SctpConfig | None = None) -> tuple[SctpServer, EventQueue]:
        transport = self.transport if config is None else open_transport(self.kind, config)  # type: ignore[arg-type]
        events = EventQueue()
        server = await transport.create_server(events, "127.0.0.1", 0)
        self.servers.append(server)
        return server, events

    async def client(
        self, server: SctpServer, *, local_port: int = 0, config: SctpConfig | None = None
    ) -> tuple[Association, EventQueue]:
        transport = self.transport if config is None else open_transport(self.kind, config)  # type: ignore[arg-type]
        events = EventQueue()
        assoc = await transport.connect(
            events, "127.0.0.1", server.port, local_host="127.0.0.1", local_port=local_port
        )
        self.clients.append(assoc)
        return assoc, events

    def blackhole(self, port: int, on: bool) -> None:
        """Silently drop the SCTP packets of the endpoint on `port` (kernel: all of lo)."""
        if self.kind == "userspace":
            sctp_usrsctp.set_blackhole(port, on)
        else:
            tc = shutil.which("tc")
            assert tc, "tc is missing: `make deps` installs iproute2"
            args = (
                ["add", "dev", "lo", "root", "netem", "loss", "100%"]
                if on
                else ["del", "dev", "lo", "root"]
            )
            subprocess.run([tc, "qdisc", *args], check=True, capture_output=True)
        if on:
            self.blackholed.append(port)
        else:
            self.blackholed.remove(port)

    async def close(self) -> None:
        for port in list(self.blackholed):
            self.blackhole(port, False)
        for assoc in self.clients:
            assoc.abort()
        for server in self.servers:
            server.close()
        await asyncio.sleep(0)


@pytest.fixture
async def env(kind: str) -> AsyncIterator[Env]:
    e = Env(kind)
    yield e
    await e.close()


async def up_pair(
    env: Env, **client_kw: object
) -> tuple[SctpServer, EventQueue, Association, EventQueue, Association]:
    """A server and one client, both sides up; returns the server's view of it last."""
    server, sev = await env.server()
    client, cev = await env.client(server, **client_kw)  # type: ignore[arg-type]
    up = await sev.get("up")
    return server, sev, client, cev, up.assoc


async def messages(events: EventQueue, n: int, timeout: float = 5.0) -> list[SctpEvent]:
    return [await events.get("message", timeout) for _ in range(n)]


# -- tests over each transport -----------------------------------------------------------------


async def test_association_up_negotiates_streams(env: Env) -> None:
    server, sev = await env.server()
    client, cev = await env.client(server)
    up = await cev.get("up")
    assert up.assoc is client and client.is_up
    assert (up.inbound_streams, up.outbound_streams) == (8, 8)
    assert (client.inbound_streams, client.outbound_streams) == (8, 8)
    sup = await sev.get("up")
    assert (sup.inbound_streams, sup.outbound_streams) == (8, 8)
    assert sup.assoc.peer == ("127.0.0.1", client.local[1])
    assert server.associations == [sup.assoc]
    # A peer offering fewer streams: INIT negotiates min(ours, theirs) each way.
    small = SctpConfig(**{**FAST.__dict__, "streams": 3})
    c2, _ = await env.client(server, config=small)
    s2 = await sev.get("up")
    assert (c2.inbound_streams, c2.outbound_streams) == (3, 3)
    assert (s2.inbound_streams, s2.outbound_streams) == (3, 3)
    with pytest.raises(ValueError, match="stream 3 out of range"):
        s2.assoc.send(3, S1AP_PPID, b"x")


async def test_messages_keep_stream_ppid_and_boundaries(env: Env) -> None:
    _, sev, client, cev, sassoc = await up_pair(env)
    # S1AP-like traffic: PPID 18 on every stream, sizes from 1 byte to beyond one receive
    # buffer (64 KiB: partial deliveries are reassembled), several messages per stream.
    sent = []
    for i in range(24):
        stream = i % 8
        data = bytes([i]) * (1 if i == 0 else 40 * i if i < 23 else 100_000)
        client.send(stream, S1AP_PPID, data)
        sent.append((stream, S1AP_PPID, data))
    events = await messages(sev, len(sent))
    assert all(e.assoc is sassoc for e in events)
    got = [(e.stream, e.ppid, e.data) for e in events]
    # Order is kept within a stream (streams are independent of each other).
    for stream in range(8):
        assert [m for m in got if m[0] == stream] == [m for m in sent if m[0] == stream]
    assert sorted(got) == sorted(sent)
    # The other way, and PPIDs whose low byte is >= 0x80 (pysctp's own send cannot do these).
    for ppid in (0, 0x80, 0xFF, 0x12345678, 0xFFFFFFFF):
        sassoc.send(5, ppid, ppid.to_bytes(4, "big"))
    back = await messages(cev, 5)
    assert [(e.stream, e.ppid, e.data) for e in back] == [
        (5, p, p.to_bytes(4, "big")) for p in (0, 0x80, 0xFF, 0x12345678, 0xFFFFFFFF)
    ]
    assert all(e.assoc is client for e in back)


async def test_send_buffer_full_queues_in_order(env: Env) -> None:
    _, sev, client, _, sassoc = await up_pair(env)
    # 4 MiB at once: far beyond the socket send buffer, so sends queue in the association
    # and go out as SACKs free space; nothing is lost or reordered, and close() waits for them.
    chunks = [i.to_bytes(4, "big") * 8192 for i in range(128)]
    for chunk in chunks:
        client.send(7, S1AP_PPID, chunk)
    assert client._pending, "the send buffer never filled: the test proves nothing"
    client.close()
    got = [e.data for e in await messages(sev, len(chunks), timeout=20)]
    assert got == chunks
    assert (await sev.get("down", timeout=10)).reason == DownReason.SHUTDOWN
    with pytest.raises(SctpError):
        sassoc.send(0, S1AP_PPID, b"x")


async def test_multiple_clients(env: Env) -> None:
    server, sev = await env.server()
    clients = [await env.client(server) for _ in range(5)]
    ups = [await sev.get("up") for _ in clients]
    assert len({u.assoc.id for u in ups}) == 5
    assert len(server.associations) == 5
    by_peer_port = {u.assoc.peer[1]: u.assoc for u in ups}
    for n, (assoc, _) in enumerate(clients):
        assoc.send(1 + n % 7, S1AP_PPID, f"from client {n}".encode())
    for event in await messages(sev, 5):
        n = int(event.data.split()[-1])
        assert event.assoc is by_peer_port[clients[n][0].local[1]]
        assert event.stream == 1 + n % 7
        event.assoc.send(event.stream, S1AP_PPID, f"to client {n}".encode())
    for n, (_, cev) in enumerate(clients):
        reply = await cev.get("message")
        assert reply.data == f"to client {n}".encode()


async def test_abort_is_seen_as_lost_at_once(env: Env) -> None:
    _, sev, client, cev, sassoc = await up_pair(env)
    started = time.monotonic()
    client.abort()
    assert (await cev.get("down")).reason == DownReason.ABORTED
    down = await sev.get("down", timeout=FAST.loss_detection_bound())
    assert down.assoc is sassoc and down.reason == DownReason.LOST
    assert time.monotonic() - started < 1.0  # the ABORT chunk, not a timeout
    assert not sassoc.is_up
    with pytest.raises(SctpError):
        sassoc.send(0, S1AP_PPID, b"late")
    # And from the server's side.
    _, cev2 = await env.client(env.servers[0])
    s2 = (await sev.get("up")).assoc
    s2.abort()
    assert (await cev2.get("down")).reason == DownReason.LOST


async def test_close_is_a_graceful_shutdown_on_both_sides(env: Env) -> None:
    _, sev, client, cev, sassoc = await up_pair(env)
    client.send(2, S1AP_PPID, b"last words")
    client.close()  # queued data is delivered before the SHUTDOWN
    msg = await sev.get("message")
    assert msg.data == b"last words"
    assert (await sev.get("down")).reason == DownReason.SHUTDOWN
    assert (await cev.get("down")).reason == DownReason.SHUTDOWN
    assert not client.is_up and not sassoc.is_up


async def test_silent_peer_loss_detected_by_heartbeats(env: Env) -> None:
    server, sev, client, _, sassoc = await up_pair(env)
    # Associations idle for a few heartbeat intervals stay up (heartbeats are answered).
    await asyncio.sleep(3 * FAST.heartbeat_interval)
    assert sassoc.is_up and client.is_up
    env.blackhole(client.local[1], True)  # the client's host vanishes: no ABORT, no SHUTDOWN
    started = time.monotonic()
    down = await sev.get("down", timeout=FAST.loss_detection_bound() + 1)
    took = time.monotonic() - started
    assert down.assoc is sassoc and down.reason == DownReason.LOST
    # Within the configured bound (plus a little event-loop latency on a loaded machine).
    assert took <= FAST.loss_detection_bound() + 0.25, (took, FAST.loss_detection_bound())
    assert took >= FAST.heartbeat_interval  # it took missed heartbeats, not a reset
    assert server.associations == []


async def test_peer_restart_is_detected(env: Env) -> None:
    server, sev, client, cev, sassoc = await up_pair(env)
    port = client.local[1]
    sassoc.send(4, S1AP_PPID, b"before")
    assert (await cev.get("message")).data == b"before"
    # The eNB "reboots": its association vanishes without the agent hearing of it ...
    env.blackhole(port, True)
    client.abort()
    await asyncio.sleep(0.05)
    env.blackhole(port, False)
    # ... and it comes back from the same address and port with a new INIT.
    client2, _ = await env.client(server, local_port=port)
    down = await sev.get("down")
    assert down.assoc is sassoc and down.reason == DownReason.RESTART
    up = await sev.get("up")
    assert up.assoc is not sassoc and up.assoc.peer == sassoc.peer
    assert (up.inbound_streams, up.outbound_streams) == (8, 8)
    client2.send(4, S1AP_PPID, b"after")
    msg = await sev.get("message")
    assert (msg.assoc, msg.data) == (up.assoc, b"after")
    with pytest.raises(SctpError):
        sassoc.send(4, S1AP_PPID, b"to the old association")


async def test_connect_refused_or_unanswered(env: Env) -> None:
    server, _ = await env.server()
    port = server.port
    server.close()
    started = time.monotonic()
    with pytest.raises((ConnectionError, TimeoutError)):
        await env.transport.connect(EventQueue(), "127.0.0.1", port)
    assert time.monotonic() - started < 10


async def test_open_transport_auto_picks_and_logs(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    from services.enb import sctp

    sctp._announced.clear()
    with caplog.at_level(logging.INFO, logger="services.enb.sctp"):
        t = open_transport("auto")
        open_transport("auto")
    assert t.kind == ("kernel" if KERNEL else "userspace")
    lines = [r.getMessage() for r in caplog.records if "SCTP transport" in r.getMessage()]
    assert len(lines) == 1, lines  # once per process
    assert ("kernel SCTP" if KERNEL else "userspace SCTP (libusrsctp)") in lines[0]
    assert open_transport(kind).kind == kind  # type: ignore[arg-type]


# -- pure parts ------------------------------------------------------------------------------


def test_ppid_byte_order_conversion() -> None:
    for ppid in (0, 18, 0x7F, 0x80, 0xFF, 0x1234, 0x80000000, 0xFFFFFFFF):
        wire = ppid_to_wire(ppid)
        assert wire.to_bytes(4, sys.byteorder) == ppid.to_bytes(4, "big")
        assert ppid_from_wire(wire) == ppid
        assert ppid_from_wire(wire - (1 << 32) if wire >= 1 << 31 else wire) == ppid  # signed
    with pytest.raises(ValueError):
        ppid_to_wire(1 << 32)
    with pytest.raises(ValueError):
        ppid_to_wire(-1)


def test_config_validation_and_loss_bound() -> None:
    with pytest.raises(ValueError):
        SctpConfig(streams=0)
    with pytest.raises(ValueError):
        SctpConfig(rto_min=2, rto_initial=1)
    assert SctpConfig().loss_detection_bound() < 60
    assert FAST.loss_detection_bound() < 3


# -- the userspace transport on the wire ---------------------------------------------------------


async def test_userspace_ignores_stray_datagrams_and_forgets_gone_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sctp_usrsctp, "HANDLE_LINGER", 0.1)
    e = Env("userspace")
    try:
        server, sev = await e.server()
        link = server._sock.link  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        stray, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", server.port)
        )
        for junk in (b"", b"x", b"\x00" * 12, b"\x00" * 40, os.urandom(100)):
            stray.sendto(junk)
        stray.close()
        await asyncio.sleep(0.2)
        assert link.peers == {}  # no INIT, no peer state
        client, _ = await e.client(server)
        await sev.get("up")
        assert len(link.peers) == 1
        client.close()
        assert (await sev.get("down")).reason == DownReason.SHUTDOWN
        await asyncio.sleep(0.3)
        assert link.peers == {}  # a long-running agent does not accumulate gone eNBs
        again, _ = await e.client(server)  # and the server still serves
        assert (await sev.get("up")).assoc.peer == ("127.0.0.1", again.local[1])
    finally:
        await e.close()


@pytest.mark.interop
async def test_userspace_packets_decode_as_sctp_in_udp(tmp_path: Path) -> None:
    """dumpcap on lo while the userspace transport talks; tshark must see SCTP in UDP."""
    dumpcap, tshark = shutil.which("dumpcap"), shutil.which("tshark")
    if dumpcap is None or tshark is None:
        pytest.fail("dumpcap/tshark missing: `make deps` installs tshark")
    e = Env("userspace")
    try:
        server, sev = await e.server()
        pcap = tmp_path / "usrsctp.pcapng"
        proc = await asyncio.create_subprocess_exec(
            dumpcap,
            "-i",
            "lo",
            "-f",
            f"udp port {server.port}",
            "-w",
            str(pcap),
            "-q",
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"Capturing on" in line, line
        await asyncio.sleep(0.5)
        client, _ = await e.client(server)
        for stream in range(8):
            client.send(stream, S1AP_PPID, b"\x00\x11\x00\x02\x00\x00")  # payload is opaque here
        await messages(sev, 8)
        client.close()
        await sev.get("down")
        await asyncio.sleep(0.5)
        proc.terminate()
        await proc.wait()
    finally:
        await e.close()
    fields = _tshark_fields(
        pcap,
        "sctp.chunk_type == 0",
        ["udp.srcport", "sctp.data_sid", "sctp.data_payload_proto_id"],
        decode_udp_port=server.port,
    )
    assert {(int(r[1], 0), int(r[2], 0)) for r in fields} == {(s, 18) for s in range(8)}
    packets = _tshark_fields(
        pcap, "sctp", ["sctp.chunk_type", "sctp.checksum.status"], decode_udp_port=server.port
    )
    chunk_types = {c for r in packets for c in r[0].split(",")}
    for chunk in ("1", "2", "10", "11", "3", "7", "8", "14"):  # INIT .. SHUTDOWN_COMPLETE
        assert chunk in chunk_types, (chunk, chunk_types)
    assert {r[1] for r in packets} == {"1"}  # every CRC32c checks out (1: good)
    assert not _tshark_fields(
        pcap,
        "_ws.malformed || _ws.expert.severity >= warning",
        ["frame.number"],
        decode_udp_port=server.port,
    )


def _tshark_fields(
    pcap: Path, display_filter: str, fields: list[str], *, decode_udp_port: int | None = None
) -> list[list[str]]:
    tshark = shutil.which("tshark")
    assert tshark
    # The payloads here are not S1AP (that check is the S1AP suite's): keep its dissector out.
    argv = [
        tshark,
        "-n",
        "-r",
        str(pcap),
        "-Y",
        display_filter,
        "-T",
        "fields",
        "-o",
        "sctp.checksum:CRC-32C",
        "--disable-protocol",
        "s1ap",
    ]
    if decode_udp_port is not None:
        argv += ["-d", f"udp.port=={decode_udp_port},sctp"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


# -- the kernel variants, in a user-mode-linux guest ---------------------------------------------

# The tests generated once per transport kind (directly or through the `env` fixture).
KIND_TESTS = sorted(
    name
    for name, fn in list(globals().items())
    if name.startswith("test_")
    and callable(fn)
    and {"kind", "env"} & set(inspect.signature(fn).parameters)
)


if not KERNEL:

    @pytest.mark.slow
    def test_kernel_suite_in_uml_guest(tmp_path: Path) -> None:
        """The `kind` tests above over kernel SCTP, inside a user-mode-linux guest, captured."""
        if uml_binary() is None:
            pytest.fail("linux.uml is missing: `make deps` installs user-mode-linux")
        pcap = tmp_path / "kernel-sctp.pcapng"
        started = time.monotonic()
        rc, output = capture_in_guest(
            pytest_argv("-q", "-m", "kernel_sctp", str(Path(__file__).resolve())), pcap, timeout=45
        )
        took = time.monotonic() - started
        assert rc == 0, output
        summary = re.search(r"(\d+) passed", output)
        assert summary, output
        assert int(summary.group(1)) == len(KIND_TESTS), (KIND_TESTS, output)
        assert not re.search(r"\d+ (failed|skipped|error)", output), output
        assert took < 60, took
        # The guest's loopback saw kernel SCTP: S1AP's PPID 18 in DATA chunks on many streams.
        rows = _tshark_fields(
            pcap,
            "sctp.data_payload_proto_id == 18",
            ["sctp.data_sid", "sctp.data_payload_proto_id"],
        )
        assert rows, "no PPID 18 DATA chunk in the guest capture"
        assert {int(r[0], 0) for r in rows} >= set(range(8))
        assert {int(r[1], 0) for r in rows} == {18}
        kinds = {
            c for r in _tshark_fields(pcap, "sctp", ["sctp.chunk_type"]) for c in r[0].split(",")
        }
        for chunk in ("1", "2", "4", "5", "6", "7", "10", "11"):  # INIT .. HEARTBEAT, ABORT
            assert chunk in kinds, (chunk, kinds)
