"""A simulated UE on our SIP core: registers with digest auth, places and answers calls.

One `Ue` is one SIP user agent with its own UDP socket, talking to its P-CSCF (the sbc). It is
the building block of loadgen's scenarios and of `volte demo`. Calls are INVITE / 180 / 200 /
ACK / BYE with an SDP body; the dialog's route set comes from Record-Route (RFC 3261 12.1.2).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field

from loadgen.rtp import RtpStream
from services.sip.digest import Challenge, answer
from services.sip.endpoint import SipEndpoint
from services.sip.headers import Headers
from services.sip.message import Request, Response, make_response
from services.sip.sdp import parse_sdp, streams
from services.sip.transaction import ClientTx, ServerTx, new_branch
from services.sip.transport import Address, Source

SDP_TEMPLATE = (
    "v=0\r\no=- {sess} {sess} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def sdp_destination(body: bytes) -> Address:
    """Where the first audio stream of an SDP body wants its RTP."""
    first = streams(parse_sdp(body))[0]
    return first.rtp.ip, first.rtp.port


class UeError(Exception):
    """A request of ours ended without the answer we needed."""


@dataclass
class CallResult:
    status: int  # final status of the INVITE (0: no answer)
    ringing_ms: float | None = None  # INVITE to 180
    answered_ms: float | None = None  # INVITE to 200
    ended: bool = False  # the BYE got its 200
    rtp_sent: int = 0
    rtp_received: int = 0
    remote_media: Address | None = None  # where the answer's SDP said to send RTP
    rtp_sources: set[Address] = field(default_factory=set)  # where RTP came from


@dataclass
class _Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    remote_uri: str  # To/From URI of the other side
    target: str  # the remote Contact: Request-URI of in-dialog requests
    route: list[str] = field(default_factory=list)
    cseq: int = 1


class Ue:
    """The transaction user of one simulated handset."""

    _tags = itertools.count(1)

    def __init__(self, number: str, password: str, *, domain: str, proxy: Address) -> None:
        self.number = number
        self.password = password
        self.domain = domain
        self.proxy = proxy
        self.endpoint = SipEndpoint(self)
        self.local: Address = ("127.0.0.1", 0)
        self._waiting: dict[ClientTx, asyncio.Future[Response]] = {}
        self._provisional: dict[ClientTx, asyncio.Queue[Response]] = {}
        self._reg_call_id = os.urandom(8).hex()
        self._reg_cseq = 0
        self._nc = 0
        self.answer_calls = True
        self.media = False  # send and count RTP during calls
        self.answered: dict[str, RtpStream] = {}  # call-id -> RTP of calls we answered
        self.invites: dict[str, Request] = {}  # call-id -> the INVITE of calls we answered
        self.bye_reasons: list[str] = []
        self.calls_answered = 0
        self.byes_received = 0

    @property
    def aor(self) -> str:
        return f"sip:{self.number}@{self.domain}"

    async def start(self, host: str = "127.0.0.1") -> None:
        self.local = await self.endpoint.listen(host, 0, tcp=False)

    async def close(self) -> None:
        await self.endpoint.close()

    # -- requests and their answers ------------------------------------------------------------
    def _request(
        self,
        method: str,
        uri: str,
        *,
        to: str,
        call_id: str,
        cseq: int,
        from_tag: str,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Request:
        headers = Headers.of(
            [
                ("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};rport;branch={new_branch()}"),
                ("Max-Forwards", "70"),
                ("From", f"<{self.aor}>;tag={from_tag}"),
                ("To", to),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Contact", f"<sip:{self.number}@{self.local[0]}:{self.local[1]}>"),
                *(extra or []),
            ]
        )
        request = Request(method, uri, headers)
        request.set_body(body, "application/sdp" if body else None)
        return request

    async def _send(self, request: Request, timeout: float = 32.0) -> Response:
        loop = asyncio.get_running_loop()
        tx = self.endpoint.send_request(request, Source("UDP", self.proxy, self.local))
        done: asyncio.Future[Response] = loop.create_future()
        self._waiting[tx] = done
        try:
            return await asyncio.wait_for(done, timeout)
        finally:
            self._waiting.pop(tx, None)

    async def register(self, expires: int = 600) -> Response:
        """REGISTER, answering one digest challenge."""
        uri = f"sip:{self.domain}"
        auth: list[tuple[str, str]] = []
        for _ in range(2):
            self._reg_cseq += 1
            request = self._request(
                "REGISTER", uri, to=f"<{self.aor}>", call_id=self._reg_call_id,
                cseq=self._reg_cseq, from_tag=f"r{self.number}",
                extra=[("Expires", str(expires)), *auth],
            )
            response = await self._send(request)
            if response.status != 401:
                return response
            challenge = Challenge.parse(response.headers.get("www-authenticate") or "")
            self._nc += 1
            creds = answer(challenge, username=self.number, password=self.password,
                           method="REGISTER", uri=uri, nc=self._nc)
            auth = [("Authorization", creds.header_value())]
        return response

    async def call(self, number: str, hold: float = 1.0) -> CallResult:
        """INVITE sip:number@domain; on 200, ACK, wait `hold` seconds, BYE."""
        call_id = os.urandom(10).hex()
        tag = f"c{next(self._tags)}"
        target = f"sip:{number}@{self.domain}"
        rtp = RtpStream()
        rtp_port = (await rtp.open(self.local[0]))[1] if self.media else 40000
        sdp = SDP_TEMPLATE.format(sess=int(time.time()), ip=self.local[0], port=rtp_port)
        invite = self._request("INVITE", target, to=f"<{target}>", call_id=call_id, cseq=1,
                               from_tag=tag, body=sdp.encode())
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        tx = self.endpoint.send_request(invite, Source("UDP", self.proxy, self.local))
        done: asyncio.Future[Response] = loop.create_future()
        self._waiting[tx] = done
        provisional: asyncio.Queue[Response] = asyncio.Queue()
        self._provisional[tx] = provisional
        result = CallResult(status=0)
        try:
            while not done.done():
                waiter = asyncio.ensure_future(provisional.get())
                await asyncio.wait({waiter, done}, timeout=32, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    if waiter.result().status == 180 and result.ringing_ms is None:
                        result.ringing_ms = (time.monotonic() - started) * 1000
                else:
                    waiter.cancel()
                if not waiter.done() and not done.done():
                    return result  # no final answer in time
            final = done.result()
        finally:
            self._waiting.pop(tx, None)
            self._provisional.pop(tx, None)
        result.status = final.status
        if final.status >= 300 or final.status < 200:
            rtp.stop()
            return result
        result.answered_ms = (time.monotonic() - started) * 1000
        dialog = _Dialog(
            call_id=call_id, local_tag=tag, remote_tag=final.to.tag or "",
            remote_uri=target, target=str((final.contacts or [])[0].uri),
            route=list(reversed(final.headers.values("record-route"))),
        )
        self._ack(dialog)
        if self.media:
            result.remote_media = sdp_destination(final.body)
            rtp.start(result.remote_media, hold)
        await asyncio.sleep(hold)
        rtp.stop()
        result.rtp_sent, result.rtp_received = rtp.sent, rtp.received
        result.rtp_sources = rtp.sources
        dialog.cseq += 1
        bye = self._in_dialog("BYE", dialog)
        result.ended = (await self._send(bye)).status == 200
        return result

    def _in_dialog(self, method: str, dialog: _Dialog, cseq: int | None = None) -> Request:
        return self._request(
            method, dialog.target, to=f"<{dialog.remote_uri}>;tag={dialog.remote_tag}",
            call_id=dialog.call_id, cseq=cseq or dialog.cseq, from_tag=dialog.local_tag,
            extra=[("Route", r) for r in dialog.route],
        )

    def _ack(self, dialog: _Dialog) -> None:
        ack = self._in_dialog("ACK", dialog, cseq=1)
        self.endpoint.send_stateless(ack, Source("UDP", self.proxy, self.local))

    # -- TransactionUser -----------------------------------------------------------------------
    def on_request(self, request: Request, tx: ServerTx | None, source: Source) -> None:
        if tx is None:
            return  # the ACK of a call we answered
        if request.method == "INVITE" and self.answer_calls and request.to.tag is None:
            asyncio.get_running_loop().create_task(self._answer(request, tx))
        elif request.method == "INVITE" and request.to.tag is not None:
            self.endpoint.reply(tx, 200, extra=[("Contact", self._contact())])
        elif request.method == "INVITE":
            self.endpoint.reply(tx, 486, to_tag=f"b{next(self._tags)}")
        elif request.method == "BYE":
            self.byes_received += 1
            self.bye_reasons.append(request.headers.get("reason") or "")
            rtp = self.answered.get(request.call_id)
            if rtp is not None:
                rtp.stop()
            self.endpoint.reply(tx, 200)
        elif request.method in ("CANCEL", "OPTIONS"):
            self.endpoint.reply(tx, 200)
        else:
            self.endpoint.reply(tx, 405)

    def _contact(self) -> str:
        return f"<sip:{self.number}@{self.local[0]}:{self.local[1]}>"

    async def _answer(self, request: Request, tx: ServerTx) -> None:
        """180, then 200 with our SDP; with media on, RTP to what the offer names."""
        tag = f"a{next(self._tags)}"
        self.invites[request.call_id] = request
        rr = [("Record-Route", v) for v in request.headers.get_all("record-route")]
        contact = [("Contact", self._contact())]
        self.endpoint.reply(tx, 180, to_tag=tag, extra=[*rr, *contact])
        rtp = RtpStream()
        port = (await rtp.open(self.local[0]))[1] if self.media else 40002
        sdp = SDP_TEMPLATE.format(sess=int(time.time()), ip=self.local[0], port=port)
        self.endpoint.respond(tx, make_response(request, 200, to_tag=tag, extra=[*rr, *contact],
                                                body=sdp.encode(),
                                                content_type="application/sdp"))
        self.calls_answered += 1
        if self.media:
            self.answered[request.call_id] = rtp
            rtp.start(sdp_destination(request.body), 30.0)  # until the BYE stops it

    def on_response(self, response: Response, tx: ClientTx | None, source: Source) -> None:
        if tx is None:
            return  # a retransmitted 2xx: our ACK went already
        if response.status < 200:
            queue = self._provisional.get(tx)
            if queue is not None:
                queue.put_nowait(response)
            return
        waiting = self._waiting.get(tx)
        if waiting is not None and not waiting.done():
            waiting.set_result(response)

    def on_timeout(self, tx: ClientTx | ServerTx) -> None:
        waiting = self._waiting.get(tx)  # type: ignore[arg-type]
        if waiting is not None and not waiting.done():
            waiting.set_exception(UeError(f"{tx.request.method} timed out"))
