"""Run a command inside a throwaway user-mode-linux guest that has real kernel SCTP.

The host kernel here has no SCTP (socket() fails with errno 93). Debian's `user-mode-linux`
package ships a 6.1 kernel as an ordinary program (`linux.uml`) with SCTP as a module. The guest
boots with the host's root as its root (hostfs), so it sees this checkout, its .venv and the
host's tools, and writes its results straight onto the host's disk. Boot to a running command
takes about 2 s here (`GuestRun.boot_s` reports it per run).

    rc, output = run_in_guest([sys.executable, "-m", "pytest", "-m", "kernel_sctp", ...], 60)
    rc, output = capture_in_guest(cmd, pcap_path, 60)      # dumpcap on the guest's lo meanwhile

Inside the guest (tests/enb/uml/guest_init.py is PID 1): proc, sysfs, devtmpfs, and a tmpfs on
/run with TMPDIR=/run/tmp for scratch files (the rest, /tmp included, is the host's filesystem:
a checkout anywhere works); the modules sctp (+ its dependencies), hmac (SCTP's cookie) and
sch_netem (tests' packet loss) are loaded; `lo` is up; `VOLTE_IN_UML_GUEST=1` is set. The guest
has no other network interface.

Everything is bounded: the command gets `timeout` seconds inside the guest, and the host kills
the whole guest (its process group) a little after that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GUEST_INIT = Path(__file__).with_name("guest_init.py")
UML_BINARY = "linux.uml"  # Debian package user-mode-linux
INSTALL_HINT = "`make deps` installs it (Debian package user-mode-linux)"
DEFAULT_MODULES = ("sctp", "hmac", "sch_netem")
# Per-run dirs (job, init script, output, capture): on the host's disk, seen by the guest.
RUN_ROOT = Path("/var/tmp")
BOOT_GRACE = 20.0  # seconds on top of the command's timeout before the host kills the guest


@dataclass(frozen=True)
class GuestRun:
    rc: int  # the command's exit status; 124 timed out in the guest, 125 guest init failed,
    # 137 the host killed the guest
    output: str  # the command's stdout+stderr (plus the guest console's tail if it failed)
    boot_s: float  # guest kernel start -> init running the command (guest clock)
    total_s: float  # host wall clock for the whole run, boot and power-off included
    console: str  # the guest kernel's console


def uml_binary() -> str | None:
    return shutil.which(UML_BINARY)


def guest_run(
    cmd: Sequence[str] | str,
    timeout: float = 60.0,
    *,
    cwd: Path | str = REPO,
    env: Mapping[str, str] | None = None,
    modules: Sequence[str] = DEFAULT_MODULES,
    mem: str = "512M",
    capture_path: Path | str | None = None,
    capture_filter: str = "sctp",
) -> GuestRun:
    """Boot a guest, run `cmd` in it (a shell string or argv), power off, return the result."""
    binary = uml_binary()
    if binary is None:
        raise FileNotFoundError(f"{UML_BINARY} is missing: {INSTALL_HINT}")
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    run = Path(tempfile.mkdtemp(prefix="volte-uml-", dir=RUN_ROOT))
    try:
        guest_env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "TMPDIR": "/run/tmp",  # a tmpfs of the guest's own (the host's /tmp stays visible)
            "PYTHONDONTWRITEBYTECODE": "1",
            "VOLTE_IN_UML_GUEST": "1",
            **(env or {}),
        }
        job: dict[str, object] = {
            "argv": argv,
            "cwd": str(cwd),
            "env": guest_env,
            "timeout": timeout,
            "modules": list(modules),
        }
        if capture_path is not None:
            job["capture"] = {"path": str(run / "capture.pcapng"), "filter": capture_filter}
        (run / "job.json").write_text(json.dumps(job))
        init = run / "init.sh"
        init.write_text(
            "#!/bin/sh\n"
            "mount -t proc proc /proc\n"
            "mount -t sysfs sysfs /sys\n"
            "mount -t tmpfs tmpfs /run\n"  # the guest's own scratch space: /run/tmp
            "mkdir -p /run/tmp\n"
            "mount -t devtmpfs devtmpfs /dev 2>/dev/null\n"
            f"exec {sys.executable} {GUEST_INIT} {run}\n"
        )
        init.chmod(0o755)
        kernel_args = [
            binary, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw",
            f"init={init}", "con=null", "con0=null,fd:1", f"uml_dir={run}", "umid=guest", "quiet",
        ]
        started = time.monotonic()
        with open(run / "console.txt", "wb") as console:
            proc = subprocess.Popen(
                kernel_args, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                cwd=run, start_new_session=True,
                env={**os.environ, "TMPDIR": _memory_dir(run)},
            )
            killed = False
            try:
                proc.wait(timeout=timeout + BOOT_GRACE)
            except subprocess.TimeoutExpired:
                killed = True
            finally:
                # The guest is several host processes in one process group: end them all.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        total = time.monotonic() - started
        console_text = (run / "console.txt").read_text(errors="replace")
        output = (run / "output.txt").read_text(errors="replace") if (
            run / "output.txt").exists() else ""
        rc_file = run / "rc"
        if killed:
            rc = 137
            output += f"\n[host] guest killed after {timeout + BOOT_GRACE:.0f} s\n"
        elif rc_file.exists():
            rc = int(rc_file.read_text().strip() or 125)
        else:
            rc = 125
        if rc != 0:
            init_log = (run / "init.log").read_text() if (run / "init.log").exists() else ""
            output += (f"\n[guest init log]\n{init_log}\n"
                       f"[guest console tail]\n{console_text[-3000:]}")
        boot = _boot_seconds(run)
        if capture_path is not None and (run / "capture.pcapng").exists():
            Path(capture_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(run / "capture.pcapng", capture_path)
        return GuestRun(rc=rc, output=output, boot_s=boot, total_s=total, console=console_text)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _memory_dir(run: Path) -> str:
    """Where UML keeps the guest's memory file (created and unlinked at once): tmpfs if there
    is room, as UML prefers, else the run dir."""
    shm = "/dev/shm"
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 << 30:
            return shm
    except OSError:
        pass
    return str(run)


def _boot_seconds(run: Path) -> float:
    """Guest uptime at the `running` line of init.log (the guest clock starts at kernel boot)."""
    try:
        for line in (run / "init.log").read_text().splitlines():
            if "] running " in line:
                return float(line[1:].split("]", 1)[0])
    except (OSError, ValueError):
        pass
    return float("nan")


def run_in_guest(cmd: Sequence[str] | str, timeout: float = 60.0,
                 **kwargs: object) -> tuple[int, str]:
    """Run `cmd` in a fresh guest with kernel SCTP; returns (exit status, output)."""
    result = guest_run(cmd, timeout, **kwargs)  # type: ignore[arg-type]
    return result.rc, result.output


def capture_in_guest(cmd: Sequence[str] | str, pcap_path: Path | str, timeout: float = 60.0,
                     *, capture_filter: str = "sctp", **kwargs: object) -> tuple[int, str]:
    """Like run_in_guest, with dumpcap capturing on the guest's `lo` (BPF filter
    `capture_filter`) from before `cmd` starts until after it ends; the pcapng lands at
    `pcap_path` on the host."""
    result = guest_run(cmd, timeout, capture_path=pcap_path, capture_filter=capture_filter,
                       **kwargs)  # type: ignore[arg-type]
    return result.rc, result.output


def pytest_argv(*args: str) -> list[str]:
    """argv for running pytest in the guest with this interpreter (the checkout's .venv)."""
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
