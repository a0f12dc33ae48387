"""`python -m services.media` as operators run it: options, health, the XDP fallback, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.media.helpers import free_tcp_port, free_udp_range

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOLTE_")}
    return {**clean, **extra}


def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.media", *args], cwd=ROOT,
                          env=env(**extra), capture_output=True, text=True, timeout=30)


def test_serving_then_sigterm_exits_0_with_the_xdp_fallback_logged_once():
    grpc_port = free_tcp_port()
    low = free_udp_range(10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.media", "--grpc-listen", f"127.0.0.1:{grpc_port}",
         "--port-min", str(low), "--port-max", str(low + 9), "--fastpath", "xdp",
         "--interface", "volte-none0"],  # cannot attach: must fall back, logging it once
        cwd=ROOT, env=env(VOLTE_TIMEOUT="5"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, proc.communicate()
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                assert time.monotonic() < deadline, "never SERVING"
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    logs = [json.loads(line) for line in err.splitlines()]
    messages = [entry["message"] for entry in logs]
    assert all(entry["service"] == "media" for entry in logs)
    fallback = [m for m in messages if "XDP fast path unavailable" in m]
    assert len(fallback) == 1, messages
    assert "volte-none0" in fallback[0] and "relaying in userspace" in fallback[0]
    listening = next(e for e in logs if e["message"].startswith("media service listening"))
    assert listening["fastpath"] == "userspace"
    assert listening["ports"] == f"{low}-{low + 9}"
    assert messages[-2:] == ["draining", "stopped"]


def test_bad_options_exit_2_naming_them():
    result = run("--port-min", "5000", "--port-max", "4000")
    assert result.returncode == 2
    assert "--port-min 5000 / --port-max 4000" in result.stderr
    result = run(VOLTE_TIMEOUT="soon")
    assert result.returncode == 2
    assert "VOLTE_TIMEOUT" in result.stderr and "--timeout" in result.stderr
    result = run("--bind", "0.0.0.0")
    assert result.returncode == 2
    assert "--advertised" in result.stderr
    result = run("--fastpath", "dpdk")
    assert result.returncode == 2
    assert "userspace, xdp" in result.stderr
