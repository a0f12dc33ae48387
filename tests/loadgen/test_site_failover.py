"""Site failover ("private and public cloud") on one machine: two `volte up --site` stacks, the
first on 127.0.0.1, the second on 127.0.0.2 with its Redis replicating the first's and its
sentinels (its own and a witness) watching it. loadgen places calls through the first site,
kills every process of it at once, and its UEs move to their secondary P-CSCF.

All real: redis-server (replica and sentinels included), state, media, enb-agent, sbc.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.cli import main
from services.stack import Stack, StackConfig, free_port, free_port_run
from services.subscribers import Provisioner
from tests.loadgen.test_scenarios import started_on_free_ports

pytestmark = [pytest.mark.interop, pytest.mark.slow]
FIRST = 700000
PASSWORD = "site-secret"
SUBSCRIBERS = 30


def site(run_dir: Path, name: str, host: str, peer_redis: str = "") -> Stack:
    def config() -> StackConfig:
        made = StackConfig(
            sip_host=host, sip_port=free_port(), redis_port=free_port(),
            state_grpc=f"{host}:{free_port()}", sbc_grpc=f"{host}:{free_port()}",
            media_grpc=f"{host}:{free_port()}", enb_grpc=f"{host}:{free_port()}",
            enb_sctp_port=free_port(2), enb_sctp_transport="userspace",
            media_port_min=45000, media_port_max=45999, run_dir=str(run_dir),
            site=name, peer_redis=peer_redis, sentinel_port=free_port_run(2),  # + witness
        )
        made.localise()
        return made

    return started_on_free_ports(config)


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    first = site(tmp_path / "a", "a", "127.0.0.1")
    try:
        c = first.config
        provisioner = Provisioner(c.state_grpc)
        provisioner.provision(SUBSCRIBERS, FIRST, c.domain, PASSWORD)
        provisioner.close()
        second = site(tmp_path / "b", "b", "127.0.0.2", f"127.0.0.1:{c.redis_port}")
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def redis_role(config: StackConfig) -> str:
    out = subprocess.run(["redis-cli", "-h", config.redis_host, "-p", str(config.redis_port),
                          "role"], capture_output=True, text=True, timeout=5).stdout
    return out.split("\n", 1)[0]


def test_second_site_replicates_and_takes_over(sites: tuple[Stack, Stack],
                                               tmp_path: Path) -> None:
    first, second = sites
    a, b = first.config, second.config
    assert redis_role(b) == "slave"
    report_path = tmp_path / "report.json"
    code = main([
        "failover", "--kill", "site", "--run-dir", a.run_dir,
        "--target", f"{a.sip_host}:{a.sip_port}", "--target", f"{b.sip_host}:{b.sip_port}",
        "--subscribers", str(SUBSCRIBERS), "--start", str(FIRST), "--password", PASSWORD,
        "--rate", "8", "--duration", "12", "--event-at", "4", "--hold", "1",
        "--setup-timeout", "2", "--no-media", "--progress", "lines",
        "--report", str(report_path),
    ])
    report: dict[str, Any] = json.loads(report_path.read_text())
    f = report["failover"]
    assert f["killed"] == "site"
    # redis, its sentinel, state, media, enb-agent, the sbc (its workers in its process group)
    assert report["events"][0]["signal"] == "SIGKILL" and len(report["events"][0]["pids"]) == 6
    assert redis_role(b) == "master"  # the sentinels promoted the second site's replica
    # Every UE registered before the event kept its registration: the moved callers were
    # served by the second site without registering again.
    assert report["registrations"]["before_load"] == SUBSCRIBERS
    assert f["registrations_kept"] == SUBSCRIBERS
    assert f["registered_again_after_move"] == 0
    assert f["ues_moved_to_secondary"] > 0
    # Calls up at the first site when it died are lost (its media relay and sbc went with it),
    # and the report says so; new calls succeed again within a few seconds.
    assert f["established_calls_lost"] == f["established_at_event"] > 0
    assert f["recovered"] and f["recovery_s"] <= 6, f["after_event"]
    assert f["failures_after_recovery"] == 0
    assert sum(s["succeeded"] for s in f["after_event"]) > 20
    assert code == 0 or report["calls"]["failed"] > 0  # failures around the event are real
