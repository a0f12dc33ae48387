"""loadgen --bearers against the real stack (redis-server, state, media, enb-agent, sbc with two
workers as processes): its UEs attach through simulated eNodeBs over SCTP (userspace here: this
kernel has none), and each answered call is checked for both UEs' QCI-1 bearers.

The bearer check reads the simulated eNBs' own view; these tests also ask the agent itself
(BearerControl gRPC) what it saw, so a check that passes without bearers would be caught.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadgen.cli import main
from services.stack import Stack
from services.subscribers import Provisioner
from tests.loadgen.test_scenarios import PASSWORD, start_stack
from volte.v1 import bearer_pb2, bearer_pb2_grpc

pytestmark = [pytest.mark.interop, pytest.mark.slow]
FIRST = 620000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(str(tmp_path_factory.mktemp("stack")))
    provisioner = Provisioner(stack.config.state_grpc)
    provisioner.provision(80, FIRST, stack.config.domain, PASSWORD)
    provisioner.close()
    yield stack
    stack.stop()


def loadgen(stack: Stack, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`loadgen` with --bearers against the stack; the agent's addresses come from its
    stack.json in --run-dir, as for a user of `volte up`."""
    report = tmp_path / "report.json"
    c = stack.config
    code = main([*args, "--bearers", "--run-dir", c.run_dir, "--password", PASSWORD,
                 "--report", str(report), "--progress", "none"])
    return code, json.loads(report.read_text()) if report.exists() else {}


def agent_stub(stack: Stack) -> tuple[grpc.Channel, bearer_pb2_grpc.BearerControlStub]:
    channel = grpc.insecure_channel(stack.config.enb_grpc)
    return channel, bearer_pb2_grpc.BearerControlStub(channel)


def loadgen_enbs(stack: Stack) -> list[str]:
    channel, stub = agent_stub(stack)
    with channel:
        reply = stub.ListEnodebs(bearer_pb2.ListEnodebsRequest(), timeout=5)
    return [e.name for e in reply.enodebs if e.name.startswith("loadgen-enb")]


def test_every_answered_call_holds_both_bearers(stack: Stack, tmp_path: Path) -> None:
    code, report = loadgen(
        stack, tmp_path, "call-setup", "--enbs", "2", "--subscribers", "20", "--start",
        str(FIRST), "--rate", "5", "--duration", "3", "--hold", "1",
        "--max-failed-ratio", "0",
    )
    assert code == 0, report.get("calls")
    calls, bearers = report["calls"], report["bearers"]
    assert calls["attempted"] >= 14 and calls["succeeded"] == calls["attempted"]
    assert bearers["enabled"] and bearers["enbs"] == 2 and bearers["ues_attached"] == 20
    assert bearers["checked"] == calls["succeeded"] and bearers["failed"] == 0
    assert bearers["left_after_load"] == 0  # the agent released every one after its BYE
    assert loadgen_enbs(stack) == []  # the simulated eNBs left with the run


def test_two_workers_attach_their_ues_through_their_own_enbs(
    stack: Stack, tmp_path: Path
) -> None:
    channel, stub = agent_stub(stack)
    events = stub.WatchEvents(bearer_pb2.WatchBearerEventsRequest(), timeout=60)
    try:
        code, report = loadgen(
            stack, tmp_path, "call-setup", "--workers", "2", "--enbs", "4", "--subscribers",
            "40", "--start", str(FIRST + 20), "--rate", "6", "--duration", "2", "--hold",
            "0.5", "--no-media", "--max-failed-ratio", "0",
        )
        assert code == 0, report.get("calls")
        bearers = report["bearers"]
        assert bearers["enbs"] == 4 and bearers["ues_attached"] == 40
        assert bearers["checked"] == report["calls"]["succeeded"] >= 10
        assert bearers["failed"] == 0
        active = 0
        connected: set[str] = set()
        seen: set[str] = set()
        for event in events:  # what the agent saw while the run lasted
            if event.kind == bearer_pb2.BearerEvent.KIND_ENB_CONNECTED:
                connected.add(event.enb_id)
                seen.add(event.enb_id)
            elif event.kind == bearer_pb2.BearerEvent.KIND_BEARER_ACTIVE:
                active += 1
            elif event.kind == bearer_pb2.BearerEvent.KIND_ENB_DISCONNECTED:
                connected.discard(event.enb_id)
                if not connected:
                    break
        # four distinct eNBs (two per worker), and a bearer for each UE of each call
        assert len(seen) == 4 and active == 2 * bearers["checked"]
    finally:
        events.cancel()
        channel.close()


def test_calls_without_their_bearers_fail_with_no_bearer(stack: Stack, tmp_path: Path) -> None:
    # failure injection: the eNBs refuse every E-RAB set-up; the sbc lets the calls go on
    # (best-effort) and loadgen must count them failed
    code, report = loadgen(
        stack, tmp_path, "call-setup", "--enbs", "2", "--enb-failures", "1", "--subscribers",
        "20", "--start", str(FIRST + 60), "--rate", "5", "--calls", "8", "--hold", "0.5",
        "--max-failed-ratio", "0",
    )
    assert code == 1
    calls, bearers = report["calls"], report["bearers"]
    assert calls["attempted"] == 8 and calls["succeeded"] == 0
    assert calls["failed_by_cause"] == {"no_bearer": 8}
    assert calls["setups_succeeded"] == 8  # SIP-wise every call was set up: 200, RTP, BYE
    assert report["media"]["calls_without_media"] == 0
    assert bearers["checked"] == 8 and bearers["failed"] == 8
