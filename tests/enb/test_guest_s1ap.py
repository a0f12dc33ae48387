"""The enb-agent suite over real kernel SCTP, in a user-mode-linux guest, checked on the wire.

This host's kernel has no SCTP, so tests/enb/test_service.py runs here over the userspace
transport only, and its kernel variants (marked `kernel_sctp`) are generated only where the
kernel has SCTP. The test below boots a user-mode-linux guest (tests/enb/uml) with the sctp
module loaded, runs exactly those variants there (`pytest -m kernel_sctp`: the same S1 Setup ->
attach -> E-RAB setup / release flow, eNB loss, bad input and the `python -m services.enb`
process, agent and simulated eNBs on kernel SCTP) with dumpcap capturing the guest's loopback,
and asserts the suite passed in full.

Then tshark's own S1AP dissector decodes the capture, as an independent check of what went on
the wire: no malformed or undissected S1AP, the procedure codes of S1 Setup (17), Initial UE
Message (12), Initial Context Setup (9), E-RAB Setup (5) and E-RAB Release (7) all present, S1
Setup on stream 0 and every UE-associated PDU on a stream other than 0. The bad-input test
injects malformed PDUs on purpose: its agent listens on `BAD_INPUT_PORT`, whose frames are left
out of the "nothing malformed" check and are checked for the Error Indications instead.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from services.enb.s1ap import Procedure
from tests.enb import test_service
from tests.enb.test_service import BAD_INPUT_PORT, KERNEL
from tests.enb.uml import capture_in_guest, pytest_argv, uml_binary

SERVICE_TESTS = Path(test_service.__file__).resolve()
# The tests of test_service.py generated once per transport kind (through `kind` or `lab`).
KIND_TESTS = sorted(
    name
    for name, fn in inspect.getmembers(test_service, inspect.isfunction)
    if name.startswith("test_") and {"kind", "lab"} & set(inspect.signature(fn).parameters)
)
UE_ASSOCIATED = {
    Procedure.E_RAB_SETUP,
    Procedure.E_RAB_RELEASE,
    Procedure.INITIAL_CONTEXT_SETUP,
    Procedure.DOWNLINK_NAS_TRANSPORT,
    Procedure.INITIAL_UE_MESSAGE,
    Procedure.UPLINK_NAS_TRANSPORT,
    Procedure.UE_CONTEXT_RELEASE_REQUEST,
    Procedure.UE_CONTEXT_RELEASE,
}
REQUIRED = {
    Procedure.S1_SETUP,
    Procedure.INITIAL_UE_MESSAGE,
    Procedure.INITIAL_CONTEXT_SETUP,
    Procedure.E_RAB_SETUP,
    Procedure.E_RAB_RELEASE,
}


def tshark(pcap: Path, display_filter: str, fields: list[str]) -> list[list[str]]:
    """One row per frame matching `display_filter`: the fields, each "a,b,..." when the frame
    carries several (bundled DATA chunks)."""
    exe = shutil.which("tshark")
    assert exe, "tshark is missing: `make deps` installs it"
    argv = [exe, "-n", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-E",
            "separator=|"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def chunks(pcap: Path, display_filter: str, *, diagnostics: bool = False
           ) -> list[tuple[int, int, int, int]]:
    """(frame, source port, stream, procedure code) per S1AP PDU of the frames matching.
    `diagnostics`: PDUs may carry Criticality Diagnostics, which name a procedure code too
    (frames with one S1AP PDU only then)."""
    rows = tshark(pcap, f"({display_filter}) && !sctp.retransmission",
                  ["frame.number", "sctp.srcport", "sctp.data_sid", "sctp.data_payload_proto_id",
                   "s1ap.procedureCode"])
    out = []
    for frame, port, sids, ppids, codes in rows:
        s1ap = [int(sid, 0) for sid, ppid in zip(sids.split(","), ppids.split(","), strict=True)
                if int(ppid, 0) == 18]
        found = [int(c) for c in codes.split(",") if c]
        if diagnostics and len(s1ap) == 1:
            found = found[:1]
        # One procedure code per S1AP PDU: a PPID 18 chunk without one was not dissected.
        assert len(found) == len(s1ap), f"frame {frame}: {len(s1ap)} S1AP chunks, codes {codes}"
        out += [(int(frame), int(port), sid, code) for sid, code in zip(s1ap, found, strict=True)]
    return out


if not KERNEL:

    @pytest.mark.slow
    def test_service_suite_over_kernel_sctp_in_uml_guest(tmp_path: Path) -> None:
        if uml_binary() is None:
            pytest.fail("linux.uml is missing: `make deps` installs user-mode-linux")
        pcap = tmp_path / "s1ap-kernel-sctp.pcapng"
        started = time.monotonic()
        rc, output = capture_in_guest(
            pytest_argv("-q", "-m", "kernel_sctp", str(SERVICE_TESTS)), pcap, timeout=50)
        took = time.monotonic() - started
        assert rc == 0, output
        summary = re.search(r"(\d+) passed", output)
        assert summary, output
        assert int(summary.group(1)) == len(KIND_TESTS), (KIND_TESTS, output)
        assert not re.search(r"\d+ (failed|skipped|error)", output), output
        assert took < 60, took

        clean = f"!(sctp.port == {BAD_INPUT_PORT})"
        # Nothing malformed, no expert warnings, no S1AP payload left undissected (but for
        # retransmitted DATA, which tshark does not dissect twice: with the tests' short RTO an
        # unhurried SACK in the guest now and then has a chunk sent again).
        bad = tshark(pcap, f"{clean} && (_ws.malformed || _ws.expert.severity >= warning || "
                     "(sctp.data_payload_proto_id == 18 && !s1ap && !sctp.retransmission))",
                     ["frame.number", "_ws.col.Info"])
        assert bad == [], f"tshark flags frames: {bad[:10]}"
        pdus = chunks(pcap, f"{clean} && s1ap")
        codes = {code for _, _, _, code in pdus}
        assert codes >= REQUIRED, sorted(codes)
        for frame, _, stream, code in pdus:
            if code == Procedure.S1_SETUP:
                assert stream == 0, f"frame {frame}: S1 Setup on stream {stream}"
            elif code in UE_ASSOCIATED:
                assert stream != 0, f"frame {frame}: UE-associated procedure {code} on stream 0"
        ue_streams = {stream for _, _, stream, code in pdus if code in UE_ASSOCIATED}
        assert len(ue_streams) >= 5, ue_streams  # spread over the UE streams

        # The bad-input test's association: the agent answered the garbage, the truncated PDU
        # and the unknown procedures (reject, notify) with Error Indications, well-formed, on
        # the stream the bad PDU came on.
        indications = [c for c in chunks(pcap, f"sctp.srcport == {BAD_INPUT_PORT} && s1ap",
                                              diagnostics=True)
                       if c[3] == Procedure.ERROR_INDICATION]
        assert [stream for _, _, stream, _ in indications] == [3] * 4, indications
        frames = " || ".join(f"frame.number == {f}" for f, _, _, _ in indications)
        assert tshark(pcap, f"({frames}) && _ws.malformed", ["frame.number"]) == []
