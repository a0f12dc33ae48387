"""PID 1 in the user-mode-linux guest (exec'd by the init.sh that tests/enb/uml/guest.py writes).

Standard library only, and written for the guest's bare start: no /etc/fstab, no udev, no modprobe
(the host image has no kmod, and the guest kernel's modules live outside /lib/modules). It:

1. loads the kernel modules named in the run's job file with finit_module(2), dependencies first
   (from the guest kernel's own modules.dep under /usr/lib/uml/modules/<version>/);
2. brings `lo` up (SIOCSIFFLAGS; no iproute2 needed);
3. optionally starts dumpcap on `lo` and waits until it is capturing;
4. runs the job's command with a time limit, output to <run dir>/output.txt;
5. writes the exit status to <run dir>/rc and powers the guest off (reboot(2)), whatever happened.

The run dir is on the host filesystem (hostfs), which is how results get back to the host.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SYS_FINIT_MODULE = 313  # x86_64: the guest runs the host's x86_64 binaries
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

libc = ctypes.CDLL(None, use_errno=True)


def log(run: Path, msg: str) -> None:
    with open(run / "init.log", "a") as f:
        f.write(f"[{time.monotonic():7.3f}] {msg}\n")


def load_modules(names: list[str]) -> list[str]:
    """Load `names` (e.g. "sctp", "hmac") and their dependencies; returns what was loaded."""
    base = Path("/usr/lib/uml/modules") / os.uname().release
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.removesuffix(".ko"): m for m in deps}
    loaded: list[str] = []

    def load(mod: str) -> None:
        if mod in loaded:
            return
        for dep in deps.get(mod, []):
            load(dep)
        fd = os.open(base / mod, os.O_RDONLY)
        try:
            if libc.syscall(SYS_FINIT_MODULE, fd, b"", 0) != 0:
                err = ctypes.get_errno()
                if err != 17:  # EEXIST: built in or already loaded
                    raise OSError(err, f"finit_module {mod}: {os.strerror(err)}")
        finally:
            os.close(fd)
        loaded.append(mod)

    for name in names:
        if name not in by_name:
            raise FileNotFoundError(f"no module {name!r} under {base}")
        load(by_name[name])
    return loaded


def lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def start_capture(job: dict[str, Any], run: Path) -> subprocess.Popen[bytes]:
    cap = job["capture"]
    argv = ["dumpcap", "-i", "lo", "-q", "-w", cap["path"]]
    if cap.get("filter"):
        argv += ["-f", cap["filter"]]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "Capturing on 'Loopback: lo'" once the capture is live
    log(run, f"dumpcap: {line.decode(errors='replace').strip()}")
    if b"Capturing on" not in line:
        raise RuntimeError(f"dumpcap did not start: {line!r}")
    time.sleep(0.2)
    return proc


def stop_capture(proc: subprocess.Popen[bytes], run: Path) -> None:
    time.sleep(0.3)  # let the last packets reach the ring
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    log(run, f"dumpcap exited {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}")


def main(run: Path) -> int:
    job = json.loads((run / "job.json").read_text())
    log(run, f"guest up, kernel {os.uname().release}")
    loaded = load_modules(job["modules"])
    log(run, f"modules loaded: {' '.join(Path(m).name for m in loaded)}")
    lo_up()
    capture = start_capture(job, run) if job.get("capture") else None
    env = {**job["env"]}
    log(run, f"running {job['argv']}")
    with open(run / "output.txt", "wb") as out:
        try:
            rc = subprocess.run(job["argv"], cwd=job["cwd"], env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                timeout=job["timeout"]).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[guest] command timed out after {job['timeout']} s\n".encode())
            rc = 124
    if capture is not None:
        stop_capture(capture, run)
    log(run, f"command exited {rc}")
    return rc


def poweroff() -> None:
    os.sync()
    libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)  # glibc's reboot() adds the magic numbers
    # If that failed, PID 1 exiting stops UML too (with a panic message on the console).
    os._exit(1)


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    rc = 125
    try:
        rc = main(run_dir)
    except BaseException:
        with open(run_dir / "output.txt", "a") as f:
            f.write("[guest] init failed:\n" + traceback.format_exc())
        log(run_dir, "init failed: " + traceback.format_exc().strip().splitlines()[-1])
    finally:
        try:
            (run_dir / "rc").write_text(f"{rc}\n")
        finally:
            poweroff()
