"""`volte up / status / subscribers / down` as a user runs them: real processes, no mocks.

Each command runs as `python -m services.cli` in a subprocess with free ports and its own run
dir; what it started is checked from outside (pids, gRPC health through `volte status`, a SIP
OPTIONS on the wire).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack import Stack, free_port, free_port_run, pid_alive

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.interop  # runs redis-server


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's VOLTE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTE_")}
    env.update(extra)
    return env


def volte(*args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], cwd=REPO, env=env or clean_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(n: int = 1) -> int:
    """A port p with p .. p+n-1 all free for both TCP and UDP."""
    for _ in range(200):
        base = free_port_run(n)  # never a port handed out before: Ports' four stay distinct
        if all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no free ports")


class Ports:
    def __init__(self, workers: int = 1) -> None:
        self.sip = free_ports()
        self.redis = free_ports()
        self.state = free_ports()
        self.sbc = free_ports(workers)

    def args(self) -> list[str]:
        return ["--sip-port", str(self.sip), "--redis-port", str(self.redis),
                "--state-grpc", f"127.0.0.1:{self.state}",
                "--sbc-grpc", f"127.0.0.1:{self.sbc}"]


def status_json(run_dir: Path) -> tuple[int, list[dict[str, object]]]:
    result = volte("status", "--json", "--run-dir", str(run_dir))
    return result.returncode, json.loads(result.stdout)


def wait_serving(run_dir: Path, proc: subprocess.Popen[str] | None = None,
                 timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"volte up exited {proc.returncode}: {proc.communicate()}")
        if (run_dir / "stack.json").exists():
            rc, rows = status_json(run_dir)
            if rc == 0:
                return rows
        time.sleep(0.3)
    raise AssertionError("the stack did not come up")


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("volte: "), result.stderr
    for needle in needles:
        assert needle in lines[0], result.stderr


def nothing_left(run_dir: Path, pids: list[int]) -> None:
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if pid_alive(p)]
    assert not (run_dir / "stack.json").exists()
    assert volte("status", "--run-dir", str(run_dir)).returncode == 3


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run"
    yield path
    leftover = Stack.load(str(path))  # whatever a failed test left running
    if leftover is not None:
        leftover.stop()


# -- one detached stack shared by the read-mostly tests --------------------------------------------
class Up:
    def __init__(self, run_dir: Path, ports: Ports) -> None:
        self.run_dir = run_dir
        self.ports = ports

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return volte(*args, "--run-dir", str(self.run_dir))


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    run_dir = tmp_path_factory.mktemp("volte-up") / "run"
    ports = Ports()
    result = volte("up", "--detach", "--run-dir", str(run_dir), *ports.args())
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{ports.sip} UDP and TCP" in result.stdout
    assert f"redis://127.0.0.1:{ports.redis}/0" in result.stdout
    assert f"127.0.0.1:{ports.state}" in result.stdout
    assert "volte down" in result.stdout
    yield Up(run_dir, ports)
    volte("down", "--run-dir", str(run_dir))
    leftover = Stack.load(str(run_dir))
    if leftover is not None:
        leftover.stop()


def test_status_json_shows_each_service_serving(up: Up) -> None:
    rc, rows = status_json(up.run_dir)
    assert rc == 0
    by_service = {row["service"]: row for row in rows}
    # The sbc is a supervisor with one worker, so that `volte scale` can add more.
    assert set(by_service) == {"redis", "state", "media", "enb-agent", "sbc", "sbc-worker"}
    assert by_service["redis"]["status"] == "RUNNING"
    assert by_service["state"]["status"] == "SERVING"
    assert by_service["sbc"]["status"] == "SERVING"
    assert by_service["sbc"]["address"] == f"127.0.0.1:{up.ports.sip}"
    for row in rows:
        assert isinstance(row["pid"], int)
        assert pid_alive(row["pid"])


def test_status_table(up: Up) -> None:
    result = up.run("status")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["SERVICE", "PID", "STATUS", "ADDRESS", "GRPC"]
    assert [line.split()[0] for line in lines] == ["redis", "state", "media", "enb-agent", "sbc",
                                                   "sbc-worker"]
    assert [line.split()[2] for line in lines] == ["RUNNING"] + ["SERVING"] * 5


def test_subscribers_provision_then_list(up: Up) -> None:
    result = up.run("subscribers", "provision", "--count", "3", "--password", "pw")
    assert result.returncode == 0, result.stderr
    assert "100000..100002" in result.stdout
    listed = up.run("subscribers", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    subs = {s["impi"]: s for s in json.loads(listed.stdout)}
    assert {"100000", "100001", "100002"} <= set(subs)
    assert subs["100001"]["impus"] == ["sip:100001@ims.local"]
    assert subs["100001"]["imsi"] == "001010000100001"
    assert "100002" in up.run("subscribers", "list").stdout


def test_subscribers_add_and_delete(up: Up) -> None:
    added = up.run("subscribers", "add", "4711", "--password", "pw", "--imsi", "001019999999999")
    assert added.returncode == 0, added.stderr
    subs = {s["impi"]: s for s in json.loads(up.run("subscribers", "list", "--json").stdout)}
    assert subs["4711"]["imsi"] == "001019999999999"
    assert up.run("subscribers", "delete", "4711").returncode == 0
    again = up.run("subscribers", "delete", "4711")
    assert again.returncode == 1
    assert_one_line_error(again, "no subscriber 4711")


def sip_options(sip_port: int) -> bytes:
    """One OPTIONS over UDP from a fresh source port; the sbc's reply (or AssertionError)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        call_id = uuid.uuid4().hex
        request = (
            "OPTIONS sip:ims.local SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id[:12]};rport\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:probe@ims.local>;tag=probe1\r\n"
            "To: <sip:ims.local>\r\n"
            f"Call-ID: {call_id}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(request.encode(), ("127.0.0.1", sip_port))
        reply, _ = sock.recvfrom(65535)
    assert call_id.encode() in reply
    return reply


def test_sip_options_over_udp_gets_200(up: Up) -> None:
    assert sip_options(up.ports.sip).startswith(b"SIP/2.0 200")


def test_second_up_in_the_same_run_dir_is_refused(up: Up) -> None:
    other = Ports()
    result = volte("up", "--detach", "--run-dir", str(up.run_dir), *other.args())
    assert result.returncode == 1
    assert_one_line_error(result, "already running", "volte down")
    assert status_json(up.run_dir)[0] == 0  # the running stack is untouched


# -- start and stop ---------------------------------------------------------------------------
def test_up_detach_with_workers_then_down(run_dir: Path) -> None:
    ports = Ports(workers=2)
    result = volte("up", "--detach", "--run-dir", str(run_dir), "--workers", "2",
                   "--provision", "2", *ports.args())
    assert result.returncode == 0, result.stderr
    assert "100000..100001" in result.stdout
    rc, rows = status_json(run_dir)
    assert rc == 0
    services = [row["service"] for row in rows]
    assert services.count("sbc-worker") == 2
    assert all(row["status"] in ("SERVING", "RUNNING") for row in rows)
    subs = json.loads(volte("subscribers", "list", "--json", "--run-dir", str(run_dir)).stdout)
    assert [s["impi"] for s in subs] == ["100000", "100001"]
    pids = [int(str(row["pid"])) for row in rows]

    down = volte("down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped sbc")
    nothing_left(run_dir, pids)
    again = volte("down", "--run-dir", str(run_dir))
    assert again.returncode == 0
    assert "nothing running" in again.stdout


def udp_listeners(port: int) -> set[int]:
    """The pids holding a UDP socket bound to 127.0.0.1:port (ss, from iproute2)."""
    out = subprocess.run(["ss", "-Hulnp", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def sbc_workers(run_dir: Path) -> list[int]:
    return [int(str(row["pid"])) for row in status_json(run_dir)[1]
            if row["service"] == "sbc-worker"]


def test_scale_sbc_out_and_in_while_it_serves(run_dir: Path) -> None:
    ports = Ports(workers=3)  # worker i serves gRPC on --sbc-grpc's port + i
    result = volte("up", "--detach", "--run-dir", str(run_dir), *ports.args())
    assert result.returncode == 0, result.stderr
    first = sbc_workers(run_dir)
    assert len(first) == 1

    out = volte("scale", "sbc", "3", "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sbc: 1 -> 3 worker(s), all SERVING")
    workers = sbc_workers(run_dir)
    assert len(workers) == 3 and first[0] in workers  # the first worker was left alone
    assert udp_listeners(ports.sip) >= set(workers)  # all three share the SIP port
    rows = [r for r in status_json(run_dir)[1] if r["service"] == "sbc-worker"]
    assert sorted(str(r["grpc"]) for r in rows) == [f"127.0.0.1:{ports.sbc + i}" for i in range(3)]
    assert all(r["status"] == "SERVING" for r in rows)  # each asked on its own port
    # Sources spread over the workers by the kernel's hash: every OPTIONS is answered.
    assert all(sip_options(ports.sip).startswith(b"SIP/2.0 200") for _ in range(30))
    assert Stack.load(str(run_dir)).config.sbc_workers == 3  # type: ignore[union-attr]

    out = volte("scale", "sbc", "1", "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sbc: 3 -> 1 worker(s)")
    assert sbc_workers(run_dir) == first  # the newest drained, the first kept
    assert all(sip_options(ports.sip).startswith(b"SIP/2.0 200") for _ in range(10))
    assert volte("down", "--run-dir", str(run_dir)).returncode == 0


def test_scale_without_a_stack_or_onto_a_busy_port(run_dir: Path) -> None:
    assert_one_line_error(volte("scale", "sbc", "2", "--run-dir", str(run_dir)),
                          "nothing running", "volte up")
    ports = Ports(workers=2)
    result = volte("up", "--detach", "--run-dir", str(run_dir), *ports.args())
    assert result.returncode == 0, result.stderr
    with socket.socket() as holder:  # worker 1's gRPC port
        holder.bind(("127.0.0.1", ports.sbc + 1))
        holder.listen()
        busy = volte("scale", "sbc", "2", "--run-dir", str(run_dir))
    assert_one_line_error(busy, f"127.0.0.1:{ports.sbc + 1}", "in use")
    assert len(sbc_workers(run_dir)) == 1  # nothing changed
    assert volte("down", "--run-dir", str(run_dir)).returncode == 0


def _foreground(run_dir: Path, ports: Ports) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--run-dir", str(run_dir), *ports.args()],
        cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_foreground_up_stops_everything_on_sigint(run_dir: Path) -> None:
    proc = _foreground(run_dir, Ports())
    try:
        pids = [int(str(row["pid"])) for row in wait_serving(run_dir, proc)]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "volte is up" in out
    assert "stopped" in err
    nothing_left(run_dir, pids)


def test_volte_down_stops_a_foreground_up(run_dir: Path) -> None:
    proc = _foreground(run_dir, Ports())
    try:
        pids = [int(str(row["pid"])) for row in wait_serving(run_dir, proc)]
        down = volte("down", "--run-dir", str(run_dir))
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert down.returncode == 0, down.stderr
    assert proc.returncode == 0, err  # asked to stop: a clean exit, as on Ctrl-C
    nothing_left(run_dir, pids)


# -- user errors: one line, non-zero, nothing left running -----------------------------------
def test_busy_sip_port(run_dir: Path) -> None:
    ports = Ports()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", ports.sip))
        result = volte("up", "--detach", "--run-dir", str(run_dir), *ports.args())
    assert_one_line_error(result, f"SIP port 127.0.0.1:{ports.sip}/UDP is in use", "--sip-port")
    nothing_left(run_dir, [])
    assert _free(ports.redis)  # no redis-server was left behind


def test_busy_redis_port(run_dir: Path) -> None:
    ports = Ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.redis))
        holder.listen()
        result = volte("up", "--detach", "--run-dir", str(run_dir), *ports.args())
    assert_one_line_error(result, f"Redis port {ports.redis} is in use", "--redis-port")
    nothing_left(run_dir, [])


def test_missing_redis_server(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = volte("up", "--detach", "--run-dir", str(run_dir), *Ports().args(),
                   env=clean_env(PATH=str(empty)))
    assert_one_line_error(result, "redis-server is not installed",
                          "apt-get install redis-server")
    nothing_left(run_dir, [])


def test_subscribers_without_a_stack(run_dir: Path) -> None:
    result = volte("subscribers", "list", "--run-dir", str(run_dir))
    assert result.returncode == 1
    assert_one_line_error(result, "no stack is running", "volte up")
    unreachable = volte("subscribers", "list", "--state", f"127.0.0.1:{free_ports()}")
    assert unreachable.returncode == 1
    assert_one_line_error(unreachable, "unreachable")


def test_free_ports_are_never_handed_out_twice() -> None:
    """The kernel may offer one ephemeral port twice in a row; a stack's services then shared
    it (sbc SIP and gRPC, both SO_REUSEPORT) and `volte up` waited for SERVING in vain."""
    ports = [free_port() for _ in range(300)] + [free_port(socket.SOCK_DGRAM) for _ in range(300)]
    run = free_port_run(3)
    assert len(set(ports)) == len(ports)
    assert not {run, run + 1, run + 2} & set(ports)
