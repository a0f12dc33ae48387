"""`volte demo` (what `make demo` runs): the whole system under load on one machine.

It runs the commands a user would type, printing each before it runs:

    volte up --detach --run-dir out/demo/run --sip-port P ...   every service, free ports
    volte subscribers provision --count 1000 --run-dir out/demo/run
    loadgen call-setup --media --bearers --enbs 10 --subscribers 1000 --duration 30 \\
        --rate R --hold 2 --report out/demo/report.json --plots out/demo --run-dir ...
    volte down --run-dir out/demo/run                            always, failure or Ctrl-C

The stack's SIP, Redis, state and sbc ports are free ones picked here, and the media relay's
and enb-agent's default ports give way to free ones when busy, so the demo never collides with
a `volte up` of the user's (or another demo). loadgen prints its summary and writes the JSON
report and the plots (`report.png` is the one-page summary). The exit status is loadgen's: 0
when at most --max-failed-ratio of the calls failed, 1 otherwise; 3 when the stack or the run
could not start.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from services.stack import free_port

UP_ATTEMPTS = 3

@dataclass(frozen=True)
class Demo:
    out: str = "out/demo"
    subscribers: int = 1000
    enbs: int = 10
    rate: float = 15.0
    hold: float = 2.0
    duration: float = 30.0
    max_failed_ratio: float = 0.01
    first: int = 100000
    password: str = "demo-secret"

    @property
    def run_dir(self) -> str:
        return str(Path(self.out) / "run")

    def up(self) -> list[str]:
        """`volte up` on ports free just now."""
        return ["volte", "up", "--detach", "--run-dir", self.run_dir,
                "--sip-port", str(free_port()), "--redis-port", str(free_port()),
                "--state-grpc", f"127.0.0.1:{free_port()}",
                "--sbc-grpc", f"127.0.0.1:{free_port()}"]

    def commands(self) -> tuple[list[str], list[str], list[str]]:
        """`volte subscribers provision`, `loadgen call-setup`, `volte down`."""
        run = ["--run-dir", self.run_dir]
        provision = ["volte", "subscribers", "provision", "--count", str(self.subscribers),
                     "--start", str(self.first), "--password", self.password, *run]
        load = ["loadgen", "call-setup", "--media", "--bearers", "--enbs", str(self.enbs),
                "--subscribers", str(self.subscribers), "--start", str(self.first),
                "--password", self.password, "--duration", f"{self.duration:g}",
                "--rate", f"{self.rate:g}", "--hold", f"{self.hold:g}",
                "--max-failed-ratio", f"{self.max_failed_ratio:g}",
                "--report", str(Path(self.out) / "report.json"), "--plots", self.out, *run]
        down = ["volte", "down", *run]
        return provision, load, down


def _run(argv: list[str]) -> int:
    """Run a `volte` or `loadgen` command line with this interpreter (the same installation),
    echoing it as the user would type it."""
    print(f"\n$ {shlex.join(argv)}", flush=True)
    module = {"volte": "services.cli", "loadgen": "loadgen"}[argv[0]]
    proc = subprocess.Popen([sys.executable, "-m", module, *argv[1:]])
    try:
        return proc.wait()
    except KeyboardInterrupt as exc:
        # Ctrl-C reached the command too (same process group); SIGTERM reached only us: pass
        # it on. Either way let the command end cleanly (loadgen closes its eNBs and UEs).
        if isinstance(exc, Terminated):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop as on Ctrl-C (the stack is stopped on the way out)."""


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def run_demo(demo: Demo) -> int:
    Path(demo.out).mkdir(parents=True, exist_ok=True)
    provision, load, down = demo.commands()
    previous = signal.signal(signal.SIGTERM, _terminated)
    started = time.monotonic()
    code = 3
    try:
        # A port free when picked may be taken before `volte up` binds it (busy machine):
        # `volte up` then says so and starts nothing, and the demo picks again.
        if not any(_run(demo.up()) == 0 for _ in range(UP_ATTEMPTS)):
            print("demo: the stack did not start (above: why)", file=sys.stderr)
            return 3
        if _run(provision) != 0:
            return 3
        code = _run(load)
        return code
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        code = 130
        return code
    finally:
        _run(down)
        signal.signal(signal.SIGTERM, previous)
        report, png = Path(demo.out) / "report.json", Path(demo.out) / "report.png"
        if code in (0, 1) and report.exists() and png.exists():
            print(f"\ndemo: {time.monotonic() - started:.0f} s; the report is {report}, its "
                  f"summary plot {png}", flush=True)
