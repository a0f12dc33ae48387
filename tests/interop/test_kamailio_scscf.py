"""The sbc with Kamailio as the external S-CSCF of a second domain (`--next-hop`).

Kamailio (Debian `kamailio`, started here in the foreground with tests/interop/kamailio/scscf.cfg)
is the registrar of `other.test`, usrloc in memory, no auth, and record-routes. Our stack (redis,
state, sbc) runs with `next_hop` = Kamailio's address. SIPp UEs:

- bob registers directly with Kamailio (no digest), then answers on the same port;
- our UEs register with the sbc (digest), then call or answer on the same port.

Both directions must complete INVITE/180/200/ACK/BYE on both SIPp sides with both proxies in the
route set: a UE of ours calls bob@other.test (sbc -> next hop -> bob), and bob calls one of our
UEs (Kamailio -> sbc, trusted because it comes from the next hop's address -> our UE).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from tests.interop import kamailio

SCENARIOS = Path(__file__).parent / "sipp"
PASSWORD = "secret"
FIRST = 300000
HOME, OTHER = "ims.local", "other.test"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not kamailio.available(), reason=f"needs {kamailio.INSTALL_HINT}"),
]


@dataclass
class Peer:
    stack: Stack
    kamailio: kamailio.Kamailio

    @property
    def sbc_port(self) -> int:
        return self.stack.config.sip_port


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    work = tmp_path_factory.mktemp("kamailio")
    sbc_port, kamailio_port = free_port(), free_port(socket.SOCK_DGRAM)
    scscf = kamailio.Kamailio(
        kamailio.CONFIGS / "scscf.cfg", kamailio_port, work,
        defines={"DOMAIN": f'"{OTHER}"', "PEER_DOMAIN": f'"{HOME}"',
                 "PEER_URI": f'"sip:127.0.0.1:{sbc_port}"'},
    )
    scscf.start()
    stack = Stack(StackConfig(
        sip_port=sbc_port,
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        next_hop=scscf.address,
        run_dir=str(tmp_path_factory.mktemp("stack")),
    ))
    try:
        stack.start()
        provisioner = Provisioner(stack.config.state_grpc)
        provisioner.provision(4, FIRST, HOME, PASSWORD)
        provisioner.close()
    except BaseException:
        scscf.stop()
        raise
    yield Peer(stack, scscf)
    stack.stop()
    scscf.stop()


@dataclass
class Ue:
    """A SIPp UE: who it is, which proxy it talks to, and the local port it uses throughout."""

    user: str
    domain: str
    proxy_port: int
    tmp: Path
    port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))

    def sipp(self, scenario: Path | str, *extra: str, timeout: float = 10) -> subprocess.Popen[str]:
        args = [
            "sipp", f"127.0.0.1:{self.proxy_port}", "-sf", str(scenario), "-t", "u1",
            "-i", "127.0.0.1", "-p", str(self.port), "-m", "1", "-nostdin",
            "-timeout", f"{timeout:.0f}s", "-timeout_error", "-trace_err", *extra,
        ]
        return subprocess.Popen(args, cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def register(self) -> None:
        if self.domain == HOME:  # with the sbc: digest
            users = self.tmp / f"user{self.user}.csv"
            users.write_text(
                f"SEQUENTIAL\n{self.user};{PASSWORD};{HOME};"
                f"[authentication username={self.user} password={PASSWORD}]\n"
            )
            finish(self.sipp(SCENARIOS / "ue_register.xml", "-inf", str(users)), self.tmp)
        else:  # with Kamailio: no auth
            finish(self.sipp(SCENARIOS / "peer_register.xml", "-key", "user", self.user,
                             "-key", "domain", self.domain), self.tmp)

    def call(self, callee: Ue) -> subprocess.Popen[str]:
        return self.sipp(
            SCENARIOS / "call_uac_via_peer.xml", "-s", callee.user, "-key", "caller", self.user,
            "-key", "caller_domain", self.domain, "-key", "callee_domain", callee.domain,
        )

    def answer(self, caller: Ue) -> subprocess.Popen[str]:
        """Answer one call, checking the INVITE asserts `caller`'s identity."""
        pai = f"{caller.user}@{caller.domain}".replace(".", r"\.")
        text = (SCENARIOS / "call_uas_via_peer.xml").read_text().replace("__PAI__", pai)
        scenario = self.tmp / f"call_uas_{self.user}.xml"
        scenario.write_text(text)
        return self.sipp(scenario)


def finish(proc: subprocess.Popen[str], tmp: Path, timeout: float = 20) -> None:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    errors = "".join(p.read_text(errors="replace")[-1500:] for p in tmp.glob("*_errors.log"))
    assert proc.returncode == 0, f"SIPp exit {proc.returncode}\n{out[-2000:]}\n{errors}"


def kamailio_log(peer: Peer) -> str:
    return peer.kamailio.log.read_text(errors="replace")[-2000:]


def test_our_ue_calls_the_peer_domain_through_kamailio(peer: Peer, tmp_path: Path) -> None:
    alice = Ue(str(FIRST), HOME, peer.sbc_port, tmp_path)
    bob = Ue("bob", OTHER, peer.kamailio.port, tmp_path)
    alice.register()
    bob.register()
    answering = bob.answer(caller=alice)
    try:
        finish(alice.call(bob), tmp_path)
    finally:
        finish(answering, tmp_path)
    assert "ERROR" not in kamailio_log(peer), kamailio_log(peer)


def test_peer_domain_calls_our_ue_through_kamailio(peer: Peer, tmp_path: Path) -> None:
    carol = Ue(str(FIRST + 1), HOME, peer.sbc_port, tmp_path)
    bob = Ue("bob", OTHER, peer.kamailio.port, tmp_path)
    carol.register()
    bob.register()
    answering = carol.answer(caller=bob)  # Kamailio asserted bob; the sbc trusts its next hop
    try:
        finish(bob.call(carol), tmp_path)
    finally:
        finish(answering, tmp_path)
    assert "ERROR" not in kamailio_log(peer), kamailio_log(peer)
