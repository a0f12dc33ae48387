"""Digest authentication against the RFCs' own worked examples, plus our nonces."""

from __future__ import annotations

import pytest

from services.sip.digest import (
    Challenge,
    Credentials,
    NonceState,
    answer,
    check_nonce,
    ha1,
    make_nonce,
    parse_auth_header,
    response_digest,
)
from services.sip.errors import ParseError


def test_rfc2617_md5_example() -> None:
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    got = response_digest(
        key, "MD5", "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    key = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    got = response_digest(
        key, algorithm, "GET", "/dir/index.html",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        qop="auth", nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert got == expected


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_client_answer_verifies_on_server(algorithm: str) -> None:
    challenge = Challenge(realm="ims.local", nonce="abc", algorithm=algorithm, opaque="o1")
    parsed = Challenge.parse(challenge.header_value())
    assert parsed == challenge
    creds = answer(parsed, username="100000", password="secret", method="REGISTER",
                   uri="sip:ims.local", nc=3)
    received = Credentials.parse(creds.header_value())
    assert received.nonce_count == 3
    assert received.matches(ha1("100000", "ims.local", "secret", algorithm), "REGISTER")
    assert not received.matches(ha1("100000", "ims.local", "wrong", algorithm), "REGISTER")
    assert not received.matches(ha1("100000", "ims.local", "secret", algorithm), "INVITE")


def test_auth_header_keeps_commas_inside_quotes() -> None:
    scheme, params = parse_auth_header('Digest realm="a, b", nonce="x\\"y", qop="auth,auth-int"')
    assert scheme == "Digest"
    assert params == {"realm": "a, b", "nonce": 'x"y', "qop": "auth,auth-int"}
    assert Challenge.parse('Digest realm="r", nonce="n", qop="auth-int,auth"').qop == "auth"


@pytest.mark.parametrize(
    "value",
    [
        'Digest username="u", realm="r"',  # no nonce, uri, response
        'Basic dXNlcjpwYXNz',
        'Digest username="u", realm="r", nonce="n", uri="sip:x", response="f", qop=auth',  # no nc
        'Digest username="u",, realm="r"',
    ],
)
def test_bad_credentials_are_parse_errors(value: str) -> None:
    with pytest.raises(ParseError):
        Credentials.parse(value)


def test_unknown_algorithm_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        ha1("u", "r", "p", "SHA-512-256-UNKNOWN")


def test_nonce_valid_stale_and_forged() -> None:
    secret = b"k" * 32
    nonce = make_nonce(secret, now=1000.0)
    assert check_nonce(secret, nonce, now=1010.0, lifetime=30) is NonceState.VALID
    assert check_nonce(secret, nonce, now=1031.0, lifetime=30) is NonceState.STALE
    assert check_nonce(b"other" * 8, nonce, now=1010.0, lifetime=30) is NonceState.INVALID
    assert check_nonce(secret, nonce[:-2] + "AA", now=1010.0, lifetime=30) is NonceState.INVALID
    assert check_nonce(secret, "not base64 !", now=1010.0, lifetime=30) is NonceState.INVALID
    assert make_nonce(secret, 1000.0) != nonce  # random part
