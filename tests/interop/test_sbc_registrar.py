"""The sbc's registrar edge and admission control, against the real stack, header by header.

The sbc runs with a 1 s nonce lifetime (to see stale nonces without waiting minutes) and a
small admission rate (to see overload control act); the client is tests/interop/sipclient.py.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.sip.digest import Challenge, answer
from services.stack import Stack, StackConfig, free_port
from services.subscribers import Provisioner
from tests.interop.sipclient import SipClient
from volte.v1 import state_pb2, state_pb2_grpc

pytestmark = pytest.mark.interop
FIRST = 200000
_numbers = iter(range(FIRST, FIRST + 30))
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig(
        sip_port=free_port(),
        redis_port=free_port(),
        state_grpc=f"127.0.0.1:{free_port()}",
        sbc_grpc=f"127.0.0.1:{free_port()}",
        run_dir=str(tmp_path_factory.mktemp("stack")),
        extra_sbc_args=["--nonce-lifetime", "1", "--overload-initial-rate", "40",
                        "--metrics-port", str(METRICS_PORT)],
    )
    stack = Stack(config)
    stack.start()
    provisioner = Provisioner(config.state_grpc)
    provisioner.provision(30, FIRST, "ims.local", "secret")
    provisioner.close()
    yield stack
    stack.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[SipClient]:
    ue = SipClient(("127.0.0.1", stack.config.sip_port), str(next(_numbers)))
    yield ue
    ue.close()
    time.sleep(0.05)  # let the admission bucket refill between tests


def bindings(stack: Stack, user: str) -> list[state_pb2.Binding]:
    stub = state_pb2_grpc.StateStoreStub(grpc.insecure_channel(stack.config.state_grpc))
    reply = stub.LookupBindings(
        state_pb2.LookupBindingsRequest(impu=f"sip:{user}@ims.local"), timeout=5
    )
    return list(reply.bindings)


def test_challenge_then_200_with_ims_headers(stack: Stack, client: SipClient) -> None:
    first = client.register(password=None)
    assert first.status == 401
    challenge = Challenge.parse(first.headers.get("www-authenticate") or "")
    assert (challenge.realm, challenge.algorithm, challenge.qop) == ("ims.local", "MD5", "auth")
    ok = client.register(password="secret")
    assert ok.status == 200
    assert ok.headers.get("contact") == f"<sip:{client.user}@127.0.0.1:{client.port}>;expires=600"
    assert (ok.headers.get("service-route") or "").startswith("<sip:orig@127.0.0.1:")
    assert ok.headers.get("p-associated-uri") == f"<sip:{client.user}@ims.local>"
    assert [b.received.port for b in bindings(stack, client.user)] == [client.port]


def test_wrong_password_is_challenged_again(stack: Stack, client: SipClient) -> None:
    assert client.register(password="not-it").status == 401
    assert bindings(stack, client.user) == []


def test_expiry_limits_423_and_cap(stack: Stack, client: SipClient) -> None:
    too_short = client.register(password="secret", expires=10)
    assert too_short.status == 423
    assert too_short.headers.get("min-expires") == "60"
    capped = client.register(password="secret", expires=86400)
    assert capped.status == 200
    assert (capped.headers.get("contact") or "").endswith(";expires=3600")


def test_several_contacts_then_wildcard_removal(stack: Stack, client: SipClient) -> None:
    assert client.register(password="secret").status == 200
    second = client.register(password="secret", contact=f"<sip:{client.user}@192.0.2.7:5062>")
    assert second.status == 200
    assert len(second.headers.values("contact")) == 2
    assert len(bindings(stack, client.user)) == 2
    bad = client.register(password="secret", contact="*", expires=600)
    assert bad.status == 400
    gone = client.register(password="secret", contact="*", expires=0)
    assert gone.status == 200
    assert gone.headers.get("contact") is None
    assert bindings(stack, client.user) == []


def test_path_is_echoed_when_supported(stack: Stack, client: SipClient) -> None:
    ok = client.register(
        password="secret", extra=[("Supported", "path"), ("Path", "<sip:edge.example.net;lr>")]
    )
    assert ok.status == 200
    assert ok.headers.get("path") == "<sip:edge.example.net;lr>"
    assert list(bindings(stack, client.user)[0].path) == ["<sip:edge.example.net;lr>"]


def test_stale_nonce_and_replayed_nonce_count(stack: Stack, client: SipClient) -> None:
    uri = "sip:ims.local"
    contact = [("Contact", f"<sip:{client.user}@127.0.0.1:{client.port}>"), ("Expires", "600")]
    challenged = client.request("REGISTER", uri, contact)
    challenge = Challenge.parse(challenged.headers.get("www-authenticate") or "")
    creds = answer(challenge, username=client.user, password="secret", method="REGISTER",
                   uri=uri, nc=1)
    auth = ("Authorization", creds.header_value())
    assert client.request("REGISTER", uri, [*contact, auth]).status == 200
    replay = client.request("REGISTER", uri, [*contact, auth])  # the same nc again
    assert replay.status == 401
    time.sleep(1.3)  # beyond the 1 s nonce lifetime
    late = answer(challenge, username=client.user, password="secret", method="REGISTER",
                  uri=uri, nc=2)
    stale = client.request("REGISTER", uri, [*contact, ("Authorization", late.header_value())])
    assert stale.status == 401
    assert "stale=TRUE" in (stale.headers.get("www-authenticate") or "")


def test_foreign_domain_is_forbidden(stack: Stack, client: SipClient) -> None:
    client.domain = "elsewhere.example"
    assert client.register(password="secret").status == 403


def test_overload_rejects_new_work_with_retry_after_but_serves_dialogs(
    stack: Stack, tmp_path: Path
) -> None:
    flood = SipClient(("127.0.0.1", stack.config.sip_port), str(next(_numbers)))
    try:
        uri = "sip:ims.local"
        for n in range(120):  # far beyond the 40/s rate and its 20-request burst
            flood.sock.sendto(
                (
                    f"REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{flood.port};rport;"
                    f"branch=z9hG4bKflood{n}\r\nFrom: <sip:{flood.user}@ims.local>;tag=f\r\n"
                    f"To: <sip:{flood.user}@ims.local>\r\nCall-ID: flood{n}\r\n"
                    f"CSeq: 1 REGISTER\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                flood.server,
            )
        statuses: dict[int, int] = {}
        retry_after: set[str | None] = set()
        flood.sock.settimeout(2)
        for _ in range(120):
            data = flood.sock.recv(65535)
            status = int(data.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status == 503:
                retry_after.add(data.split(b"Retry-After: ", 1)[1].split(b"\r\n")[0].decode())
        assert statuses.get(401, 0) >= 15  # the burst was admitted and challenged
        assert statuses.get(503, 0) >= 50  # the rest refused, cleanly
        assert retry_after and all(v is not None and v.isdigit() for v in retry_after)
        # In-dialog requests are never refused for load: this BYE gets its proper 481.
        bye = flood.request("BYE", f"sip:{flood.user}@127.0.0.1", [], to_tag="gone")
        assert bye.status == 481
    finally:
        flood.close()


def test_prometheus_endpoint_counts_what_happened(stack: Stack) -> None:
    """Runs last in this module: the registrations and the overload above are counted."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}  # summed over labels
    for line in text.splitlines():
        if line.startswith("sbc_"):
            name = line.split("{")[0].split(" ")[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    assert values["sbc_registrations_total"] >= 5
    assert values["sbc_overload_rejected_total"] >= 50
    assert values["sbc_sip_requests_total"] >= 100
    latency = [line for line in text.splitlines() if "latency" in line]
    assert any("_bucket" in line for line in latency), latency


def test_a_request_that_comes_back_to_us_unchanged_is_a_loop(stack: Stack) -> None:
    """RFC 3261 16.3 step 4: our own signed Via with this request's loop key: 482."""
    time.sleep(1.0)  # the overload test above drained the admission bucket
    ue = SipClient(("127.0.0.1", stack.config.sip_port), str(next(_numbers)))
    try:
        assert ue.register(password="secret").status == 200
        uri = f"sip:{FIRST + 29}@ims.local"
        seed = f"{uri}|{ue.call_id}|c{ue.port}|{ue.cseq + 1} INVITE"
        digest = hashlib.sha1(seed.encode()).hexdigest()[:10] + "0123456789"
        key = stack.config.nonce_secret.encode()
        mac = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()[:8]
        ours = f"SIP/2.0/UDP 127.0.0.1:{stack.config.sip_port};branch=z9hG4bK{digest}{mac}.0"
        looped = ue.request("INVITE", uri, [("Via", ours)], to=uri)
        assert looped.status == 482
    finally:
        ue.close()
