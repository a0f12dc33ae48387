"""`volte demo` (what `make demo` runs, here with a shorter load): the whole stack comes up,
subscribers are provisioned, loadgen places calls with media and bearers through simulated
eNodeBs, the report and its summary plot are written, and the stack is stopped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.stack import Stack, pid_alive
from tests.loadgen.test_scenarios import valid_png

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def test_demo_runs_the_system_under_load_and_stops_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        # what `make demo` runs, only a shorter load: 1,000 subscribers, 10 eNBs, 15 cps
        [sys.executable, "-m", "services.cli", "demo", "--out", str(out), "--duration", "4"],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the commands as a user would type them, in order
    steps = [line for line in done.stdout.splitlines() if line.startswith("$ ")]
    kinds = [tuple(s.split()[1:3]) for s in steps]
    assert kinds[-3:] == [("volte", "subscribers"), ("loadgen", "call-setup"),
                          ("volte", "down")]
    assert kinds[:-3] and set(kinds[:-3]) == {("volte", "up")}  # again if a port was taken
    assert "--bearers --enbs 10" in steps[-2] and "--media" in steps[-2]
    assert "QCI-1 bearers checked / missing" in done.stdout  # loadgen's summary

    report = json.loads((out / "report.json").read_text())
    calls = report["calls"]
    assert calls["succeeded"] >= 45 and calls["failed_ratio"] <= 0.01, done.stdout[-3000:]
    assert report["media"]["calls_checked"] >= calls["succeeded"]
    assert report["media"]["calls_without_media"] == 0
    bearers = report["bearers"]
    assert bearers["ues_attached"] == 1000 and bearers["enbs"] == 10
    assert bearers["checked"] >= calls["succeeded"] and bearers["failed"] == 0
    assert valid_png(out / "report.png")

    run_dir = out / "run"
    assert not (run_dir / "stack.json").exists()  # `volte down` ran
    stopped = next(line for line in done.stdout.splitlines() if line.startswith("stopped "))
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", stopped)]
    assert len(pids) == 5 and not any(pid_alive(pid) for pid in pids)  # every service
    assert Stack.load(str(run_dir)) is None
