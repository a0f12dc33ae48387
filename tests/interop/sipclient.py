"""A small blocking SIP UA over UDP for edge-case tests (registrar rules, overload, auth).

SIPp plays the UEs in the main call tests; this one exists for the cases where a test needs to
look at every header of an answer. It is built on our own parser and digest code.
"""

from __future__ import annotations

import itertools
import socket
import uuid

from services.sip import Response, parse_message
from services.sip.digest import Challenge, answer

_branches = itertools.count(1)


class SipClient:
    def __init__(self, server: tuple[str, int], user: str, domain: str = "ims.local") -> None:
        self.server = server
        self.user = user
        self.domain = domain
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        to: str | None = None,
        to_tag: str | None = None,
        timeout: float = 3.0,
    ) -> Response:
        """Send one request; return the first final response (provisional ones skipped)."""
        self.cseq += 1
        aor = f"sip:{self.user}@{self.domain}"
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bKc{next(_branches)}",
            f"From: <{aor}>;tag=c{self.port}",
            f"To: <{to or aor}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {method}",
            "Max-Forwards: 70",
            *(f"{name}: {value}" for name, value in headers or []),
            "Content-Length: 0",
            "",
            "",
        ]
        self.sock.sendto("\r\n".join(lines).encode(), self.server)
        self.sock.settimeout(timeout)
        while True:
            message = parse_message(self.sock.recv(65535))
            assert isinstance(message, Response)
            if message.status >= 200:
                return message

    def register(
        self,
        password: str | None,
        extra: list[tuple[str, str]] | None = None,
        *,
        contact: str | None = None,
        expires: int | None = 600,
    ) -> Response:
        """REGISTER; with a password, answer the 401 challenge once."""
        headers = [("Contact", contact or f"<sip:{self.user}@127.0.0.1:{self.port}>")]
        if expires is not None:
            headers.append(("Expires", str(expires)))
        headers += extra or []
        uri = f"sip:{self.domain}"
        response = self.request("REGISTER", uri, headers)
        if response.status != 401 or password is None:
            return response
        challenge = Challenge.parse(response.headers.get("www-authenticate") or "")
        creds = answer(challenge, username=self.user, password=password, method="REGISTER",
                       uri=uri)
        return self.request("REGISTER", uri, [*headers, ("Authorization", creds.header_value())])
