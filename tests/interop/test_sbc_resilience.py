"""The sbc when things break: a worker killed mid-call, Redis stopped, malformed SIP.

Real processes throughout: two sbc workers sharing the SIP port, the state service, Redis,
SIPp UEs. Redis "stops" by SIGSTOP (it stops answering, as a hung or partitioned server
does) and comes back by SIGCONT with its data intact. Each test runs twice: with the sbc on
Redis itself (`--state-redis`, what `volte up` does) and through the state service's gRPC API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.sip import Request, parse_message
from services.sip.message import make_response
from services.stack import Stack, StackConfig, children, free_port, free_port_run
from services.subscribers import Provisioner
from tests.interop.sipclient import SipClient
from tests.interop.test_sbc_calls import FIRST, PASSWORD, Ue, finish
from volte.v1 import common_pb2, state_pb2, state_pb2_grpc

pytestmark = pytest.mark.interop

_numbers = iter(range(FIRST, FIRST + 80))


@pytest.fixture(scope="module", params=["redis", "grpc"])
def stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port_run(2)}",  # worker i listens on port + i
        sbc_workers=2,
        run_dir=str(tmp_path_factory.mktemp("stack")),
        sbc_state=request.param,
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(80, FIRST, "ims.local", PASSWORD)
    provisioner.close()
    yield stack
    stack.stop()


def stub(stack: Stack) -> state_pb2_grpc.StateStoreStub:
    return state_pb2_grpc.StateStoreStub(grpc.insecure_channel(stack.config.state_grpc))


def sbc_workers(stack: Stack) -> list[int]:
    supervisor = next(p.pid for p in stack.procs if p.service == "sbc")
    return children(supervisor)


def get_dialog(stack: Stack, dialog_id: common_pb2.DialogId) -> state_pb2.Dialog | None:
    try:
        dialog: state_pb2.Dialog = stub(stack).GetDialog(
            state_pb2.GetDialogRequest(id=dialog_id), timeout=2
        )
        return dialog
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return None


def wait_for(predicate: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killing_the_worker_that_handled_the_invite_loses_no_call(
    stack: Stack, tmp_path: Path
) -> None:
    workers = wait_for(lambda: len(sbc_workers(stack)) == 2 and sbc_workers(stack), 10, "workers")
    assert isinstance(workers, list)
    caller, callee = Ue(stack, next(_numbers), tmp_path), Ue(stack, next(_numbers), tmp_path)
    caller.register()
    callee.register()
    # The callee is our own UAS (services.sip.uas) on the port it registered from: it answers
    # where the Via says, as RFC 3261 section 18.2.2 asks. A SIPp UAS answers to the address
    # the dialog's first request came from, which here is the killed worker's.
    answering = subprocess.Popen(
        [sys.executable, "-m", "services.sip.uas", "--listen", f"127.0.0.1:{callee.port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert answering.stdout is not None
        assert b"listening" in answering.stdout.readline()
        calling = caller.call(callee.number, hold_ms=4000)
        dialog = wait_for(lambda: dialog_of(stack, calling.pid), 10, "the dialog in state")
        assert isinstance(dialog, state_pb2.Dialog)
        handler = int(dialog.sbc_instance.rsplit("-", 1)[1])
        assert handler in workers
        os.kill(handler, signal.SIGKILL)
        # The BYE (after the 4 s hold) goes through another worker, which routes it from the
        # flow token in the Route header and deletes the dialog from state.
        finish(calling, tmp_path)
    finally:
        answering.terminate()
        answering.wait(timeout=10)
    wait_for(lambda: dialog_of(stack, calling.pid) is None, 5, "the dialog to be deleted")
    assert handler not in sbc_workers(stack)  # and the supervisor replaced it
    wait_for(lambda: len(sbc_workers(stack)) == 2, 10, "a replacement worker")


def dialog_of(stack: Stack, sipp_pid: int) -> state_pb2.Dialog | None:
    """The dialog of SIPp's first call (its Call-ID and tag are made of its pid)."""
    return get_dialog(
        stack,
        common_pb2.DialogId(call_id=f"1-{sipp_pid}@127.0.0.1", from_tag=f"{sipp_pid}SIPpTag1"),
    )


def invite(
    port: int, source: socket.socket, call_id: str, caller: int = FIRST, callee: int = FIRST + 39
) -> bytes:
    local = source.getsockname()[1]
    return (
        f"INVITE sip:{callee}@ims.local SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};rport;branch=z9hG4bK{call_id}\r\n"
        f"From: <sip:{caller}@ims.local>;tag=t{call_id}\r\nTo: <sip:{callee}@ims.local>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:{caller}@127.0.0.1:{local}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def final_status(sock: socket.socket, timeout: float) -> tuple[int, float]:
    """The first final status received and the seconds it took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    while True:
        data = sock.recv(65535)
        status = int(data.split(b" ", 2)[1])
        if status >= 200:
            return status, time.monotonic() - start


def test_redis_stopped_gives_503_within_a_second_and_service_recovers(
    stack: Stack, tmp_path: Path
) -> None:
    ue = Ue(stack, next(_numbers), tmp_path)
    ue.register()
    before = stub(stack).LookupBindings(
        state_pb2.LookupBindingsRequest(impu=f"sip:{ue.number}@ims.local"), timeout=5
    ).bindings
    assert len(before) == 1
    redis = next(p.pid for p in stack.procs if p.service == "redis")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    os.kill(redis, signal.SIGSTOP)
    try:
        sock.sendto(invite(stack.config.sip_port, sock, "down1"), ("127.0.0.1",
                                                                 stack.config.sip_port))
        status, seconds = final_status(sock, 5)
        assert status == 503
        assert seconds < 1.0
    finally:
        os.kill(redis, signal.SIGCONT)
    # Back: the registration made before is still there and the sbc routes again (the
    # unregistered caller now gets the proper 403, not 503).
    after = wait_for(
        lambda: stub(stack).LookupBindings(
            state_pb2.LookupBindingsRequest(impu=f"sip:{ue.number}@ims.local"), timeout=5
        ).bindings,
        5,
        "the binding after recovery",
    )
    assert [b.contact_uri for b in after] == [b.contact_uri for b in before]  # type: ignore[attr-defined]
    sock.sendto(invite(stack.config.sip_port, sock, "up1"), ("127.0.0.1", stack.config.sip_port))
    assert final_status(sock, 5)[0] == 403
    sock.close()


def test_a_ue_without_nat_is_reached_from_the_worker_that_awaits_its_answer(
    stack: Stack,
) -> None:
    """Two workers share the SIP port. Toward a UE whose Contact is where it registered from
    (no NAT), the forwarding worker sends from its own port and names it in the Via, so the
    answer comes straight back to it; toward a UE whose Contact says another address (a NAT in
    front of it) it sends from the SIP port, with the signed worker tag for the hand-over."""
    port = stack.config.sip_port
    caller, direct, natted = (SipClient(("127.0.0.1", port), str(next(_numbers)))
                              for _ in range(3))
    try:
        for ue, contact in ((caller, None), (direct, None),
                            (natted, f"<sip:{natted.user}@10.9.9.9:5060>")):
            assert ue.register(PASSWORD, contact=contact).status == 200
        for callee, behind_nat in ((direct, False), (natted, True)):
            call_id = f"nat{behind_nat}{callee.port}"
            caller.sock.sendto(invite(port, caller.sock, call_id, int(caller.user),
                                      int(callee.user)), ("127.0.0.1", port))
            callee.sock.settimeout(5)
            while True:
                data, sbc_address = callee.sock.recvfrom(65535)
                if data.startswith(b"INVITE"):
                    break
            request = parse_message(data)
            assert isinstance(request, Request)
            via = request.top_via
            if behind_nat:
                assert (via.port, sbc_address[1]) == (port, port)
                assert "vw" in via.params
            else:
                assert via.port == sbc_address[1] != port  # the worker's own port
                assert "vw" not in via.params
            callee.sock.sendto(make_response(request, 486, to_tag="busy").to_bytes(),
                               sbc_address)
            assert final_status(caller.sock, 5)[0] == 486
    finally:
        for ue in (caller, direct, natted):
            ue.close()


def test_malformed_sip_gets_400_and_the_sbc_keeps_serving(stack: Stack, tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    target = ("127.0.0.1", stack.config.sip_port)
    bad = invite(stack.config.sip_port, sock, "bad1").replace(b"CSeq: 1 INVITE", b"CSeq: x")
    sock.sendto(bad, target)
    status, _ = final_status(sock, 5)
    assert status == 400
    sock.sendto(b"\x00\xffgarbage that is not SIP at all\r\n\r\n", target)
    sock.sendto(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP [::1\r\n\r\n", target)
    # Still serving, and a good call goes through.
    caller, callee = Ue(stack, next(_numbers), tmp_path), Ue(stack, next(_numbers), tmp_path)
    caller.register()
    callee.register()
    answering = callee.answer()
    finish(caller.call(callee.number), tmp_path)
    finish(answering, tmp_path)
    sock.close()
