"""A simulated UE on our SIP core: registers with digest auth, places and answers calls.

One `Ue` is one SIP user agent with its own UDP socket, talking to its P-CSCF (the sbc). It is
the building block of loadgen's scenarios and of `volte demo`. Calls are INVITE / 180 / 200 /
ACK / BYE with an SDP body; the dialog's route set comes from Record-Route (RFC 3261 12.1.2).

Two ways to place a call:
- `call(number, hold=...)`: the whole call in one go (INVITE, talk for `hold` seconds, BYE),
  optionally put on hold and resumed by re-INVITE at given times (`hold_after`, `resume_after`);
- `dial(number)`: INVITE until answered, returning a `Call` to drive step by step:
  `await call.hold()` (re-INVITE with a=sendonly), `await call.resume()` (a=sendrecv),
  `await call.hang_up()` (BYE, answers the CallResult).
Either UE answers a re-INVITE with its own current SDP (same o= session, version + 1, same RTP
port) and the direction that mirrors the offer (sendonly -> recvonly, inactive -> inactive,
sendrecv -> sendrecv); its RTP pauses while its answer says it must not send. The holding side
pauses its own RTP too, unless told to play music on hold (`hold(music=True)`).
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
from services.sip.headers import HeaderField, Headers, canonical_name
from services.sip.message import Request, Response, make_response
from services.sip.sdp import Direction, parse_sdp, streams
from services.sip.transaction import ClientTx, ServerTx, new_branch
from services.sip.transport import Address, Source

SDP_TEMPLATE = (
    "v=0\r\no=- {sess} {sess} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)
# What an answer says to an offer's direction (RFC 3264 section 6.1).
ANSWER_DIRECTION = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}
SENDING = frozenset((Direction.SENDRECV, Direction.SENDONLY))


def sdp_destination(body: bytes) -> Address:
    """Where the first audio stream of an SDP body wants its RTP."""
    first = streams(parse_sdp(body))[0]
    return first.rtp.ip, first.rtp.port


def sdp_direction(body: bytes) -> Direction:
    """The direction of the first stream of an SDP body, as its sender means it."""
    return parse_sdp(body).direction_for(0)


@dataclass
class LocalSdp:
    """Our side of one call's SDP: the o= session stays, the version goes up with each body
    we send (RFC 3264 section 8), the address and port stay."""

    ip: str
    port: int
    session: int = field(default_factory=lambda: int(time.time()))
    version: int = -1

    def render(self, direction: Direction = Direction.SENDRECV) -> bytes:
        self.version += 1
        sdp = SDP_TEMPLATE.format(sess=self.session, ip=self.ip, port=self.port)
        # o=- <session> <version>: the template writes the session id twice.
        sdp = sdp.replace(f"o=- {self.session} {self.session} ",
                          f"o=- {self.session} {self.session + self.version} ", 1)
        return sdp.replace("a=sendrecv\r\n", f"a={direction.value}\r\n").encode()


@dataclass
class _Media:
    """What a UE keeps per call for re-INVITEs in either direction."""

    sdp: LocalSdp
    rtp: RtpStream


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
    reinvites: list[int] = field(default_factory=list)  # final status of each re-INVITE sent


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
        # call-id -> SDP offers received: the INVITE's (calls we answered), each re-INVITE's
        self.offers: dict[str, list[bytes]] = {}
        self._media: dict[str, _Media] = {}  # call-id -> our SDP and RTP, calls either way
        self.bye_reasons: list[str] = []
        self.calls_answered = 0
        self.byes_received = 0
        self.acks_received = 0  # ACKs for the 2xx of calls we answered

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
        # The fields built with their keys as they are (a load run builds a few per call).
        host, port = self.local
        fields: list[HeaderField] = [
            ("via", "Via", f"SIP/2.0/UDP {host}:{port};rport;branch={new_branch()}", None),
            ("max-forwards", "Max-Forwards", "70", None),
            ("from", "From", f"<{self.aor}>;tag={from_tag}", None),
            ("to", "To", to, None),
            ("call-id", "Call-ID", call_id, None),
            ("cseq", "CSeq", f"{cseq} {method}", None),
            ("contact", "Contact", f"<sip:{self.number}@{host}:{port}>", None),
            *((canonical_name(n), n, v, None) for n, v in extra or ()),
        ]
        if body:
            fields.append(("content-type", "Content-Type", "application/sdp", None))
        fields.append(("content-length", "Content-Length", str(len(body)), None))
        return Request(method, uri, Headers(fields), body)

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

    async def call(
        self,
        number: str,
        hold: float = 1.0,
        *,
        hold_after: float | None = None,
        resume_after: float | None = None,
    ) -> CallResult:
        """INVITE sip:number@domain; on 200, ACK, wait `hold` seconds, BYE.

        With `hold_after`, the call goes on hold (re-INVITE a=sendonly, our RTP paused) that
        many seconds after the answer; with `resume_after` too, it is resumed (a=sendrecv)
        then. Both count from the answer and are bounded by `hold`.
        """
        call = await self.dial(number, rtp_seconds=hold)
        if not call.answered:
            return call.result
        answered = time.monotonic()
        steps = [(at, step) for at, step in ((hold_after, call.hold), (resume_after, call.resume))
                 if at is not None and at < hold]
        for at, step in sorted(steps, key=lambda s: s[0]):
            await asyncio.sleep(max(0.0, answered + at - time.monotonic()))
            await step()
        await asyncio.sleep(max(0.0, answered + hold - time.monotonic()))
        return await call.hang_up()

    async def dial(
        self, number: str, *, rtp_seconds: float = 60.0, offer: bytes | None = None
    ) -> Call:
        """INVITE sip:number@domain until a final answer. On 2xx: ACK, RTP starts (with media
        on, for at most `rtp_seconds`) and the `Call` is answered; otherwise `call.result`
        says what came back (and `call.final` is the response). `offer`: an SDP body to send
        instead of ours (a test of how bad SDP is refused)."""
        call_id = os.urandom(10).hex()
        tag = f"c{next(self._tags)}"
        target = f"sip:{number}@{self.domain}"
        rtp = RtpStream()
        rtp_port = (await rtp.open(self.local[0]))[1] if self.media else 40000
        local = LocalSdp(self.local[0], rtp_port)
        invite = self._request("INVITE", target, to=f"<{target}>", call_id=call_id, cseq=1,
                               from_tag=tag, body=local.render() if offer is None else offer)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        tx = self.endpoint.send_request(invite, Source("UDP", self.proxy, self.local))
        done: asyncio.Future[Response] = loop.create_future()
        self._waiting[tx] = done
        provisional: asyncio.Queue[Response] = asyncio.Queue()
        self._provisional[tx] = provisional
        result = CallResult(status=0)
        call = Call(self, result, None, rtp, local)
        call.sdp_sent.append(invite.body)
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
                    rtp.stop()
                    return call  # no final answer in time
            final = done.result()
        finally:
            self._waiting.pop(tx, None)
            self._provisional.pop(tx, None)
        result.status = final.status
        call.final = final
        if final.status >= 300 or final.status < 200:
            rtp.stop()
            return call
        result.answered_ms = (time.monotonic() - started) * 1000
        call.dialog = _Dialog(
            call_id=call_id, local_tag=tag, remote_tag=final.to.tag or "",
            remote_uri=target, target=str((final.contacts or [])[0].uri),
            route=list(reversed(final.headers.values("record-route"))),
        )
        self._ack(call.dialog, 1)
        call.sdp_received.append(final.body)
        self._media[call_id] = _Media(local, rtp)
        if self.media:
            result.remote_media = sdp_destination(final.body)
            rtp.start(result.remote_media, rtp_seconds)
        return call

    def _in_dialog(self, method: str, dialog: _Dialog, cseq: int | None = None) -> Request:
        return self._request(
            method, dialog.target, to=f"<{dialog.remote_uri}>;tag={dialog.remote_tag}",
            call_id=dialog.call_id, cseq=cseq or dialog.cseq, from_tag=dialog.local_tag,
            extra=[("Route", r) for r in dialog.route],
        )

    def _ack(self, dialog: _Dialog, cseq: int) -> None:
        ack = self._in_dialog("ACK", dialog, cseq=cseq)
        self.endpoint.send_stateless(ack, Source("UDP", self.proxy, self.local))

    # -- TransactionUser -----------------------------------------------------------------------
    def on_request(self, request: Request, tx: ServerTx | None, source: Source) -> None:
        if tx is None:  # the ACK of a call we answered
            self.acks_received += 1
            return
        if request.method == "INVITE" and self.answer_calls and request.to.tag is None:
            asyncio.get_running_loop().create_task(self._answer(request, tx))
        elif request.method == "INVITE" and request.to.tag is not None:
            self._reinvited(request, tx)
        elif request.method == "INVITE":
            self.endpoint.reply(tx, 486, to_tag=f"b{next(self._tags)}")
        elif request.method == "BYE":
            self.byes_received += 1
            self.bye_reasons.append(request.headers.get("reason") or "")
            rtp = self.answered.get(request.call_id)
            if rtp is not None:
                rtp.stop()
            self._media.pop(request.call_id, None)
            self.endpoint.reply(tx, 200)
        elif request.method in ("CANCEL", "OPTIONS"):
            self.endpoint.reply(tx, 200)
        else:
            self.endpoint.reply(tx, 405)

    def _contact(self) -> str:
        return f"<sip:{self.number}@{self.local[0]}:{self.local[1]}>"

    def _reinvited(self, request: Request, tx: ServerTx) -> None:
        """A re-INVITE in a call of ours: answer the offer with our current SDP and the
        mirrored direction; our RTP follows (paused while we may not send, and sent to
        wherever the offer now says)."""
        contact = [("Contact", self._contact())]
        media = self._media.get(request.call_id)
        if media is None:  # not a call of ours that we know the media of: a bare 200
            self.endpoint.reply(tx, 200, extra=contact)
            return
        if not request.body:  # an offerless re-INVITE: our 200 carries the offer
            body = media.sdp.render()
        else:
            try:
                offered = sdp_direction(request.body)
                destination = sdp_destination(request.body)
            except (ValueError, IndexError):
                self.endpoint.reply(tx, 488, extra=contact)
                return
            self.offers.setdefault(request.call_id, []).append(request.body)
            direction = ANSWER_DIRECTION[offered]
            body = media.sdp.render(direction)
            if direction in SENDING:
                media.rtp.resume()
            else:
                media.rtp.pause()
            if media.rtp.destination is not None:
                media.rtp.destination = destination
        self.endpoint.respond(tx, make_response(request, 200, extra=contact, body=body,
                                                content_type="application/sdp"))

    async def _answer(self, request: Request, tx: ServerTx) -> None:
        """180, then 200 with our SDP; with media on, RTP to what the offer names."""
        tag = f"a{next(self._tags)}"
        self.invites[request.call_id] = request
        rr = [("Record-Route", v) for v in request.headers.get_all("record-route")]
        contact = [("Contact", self._contact())]
        self.endpoint.reply(tx, 180, to_tag=tag, extra=[*rr, *contact])
        rtp = RtpStream()
        port = (await rtp.open(self.local[0]))[1] if self.media else 40002
        local = LocalSdp(self.local[0], port)
        self._media[request.call_id] = _Media(local, rtp)
        self.offers[request.call_id] = [request.body]
        self.endpoint.respond(tx, make_response(request, 200, to_tag=tag, extra=[*rr, *contact],
                                                body=local.render(),
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


class Call:
    """A call this UE placed (`Ue.dial`): hold, resume and hang up by in-dialog requests."""

    def __init__(
        self, ue: Ue, result: CallResult, dialog: _Dialog | None, rtp: RtpStream, sdp: LocalSdp
    ) -> None:
        self.ue = ue
        self.result = result
        self.dialog = dialog  # None until answered
        self.rtp = rtp
        self.sdp = sdp
        self.final: Response | None = None  # the INVITE's final response
        self.sdp_sent: list[bytes] = []  # our offer in the INVITE, then in each re-INVITE
        self.sdp_received: list[bytes] = []  # the answer, then each re-INVITE's answer
        self.on_hold = False
        self.over = False

    @property
    def answered(self) -> bool:
        return self.dialog is not None

    @property
    def call_id(self) -> str:
        return self.dialog.call_id if self.dialog is not None else ""

    async def hold(self, *, music: bool = False) -> Response:
        """re-INVITE with a=sendonly. Our RTP pauses (from the moment we ask) unless `music`
        (music on hold: we go on sending, which sendonly allows)."""
        response = await self.reinvite(Direction.SENDONLY, send=music)
        self.on_hold = response.status < 300 or self.on_hold
        return response

    async def resume(self) -> Response:
        """re-INVITE with a=sendrecv; our RTP goes on once the answer allows it."""
        response = await self.reinvite(Direction.SENDRECV)
        if response.status < 300:
            self.on_hold = False
        return response

    async def reinvite(self, direction: Direction, *, send: bool = True) -> Response:
        """Send our SDP again with `direction`; ACK a 2xx and follow its answer: our RTP goes
        to what it names, and is sent while both directions allow it and `send` (False: we
        stop sending from the moment we ask)."""
        if self.dialog is None or self.over:
            raise UeError("re-INVITE outside an established call")
        ue = self.ue
        was_paused = self.rtp.paused
        if not send:
            self.rtp.pause()
        self.dialog.cseq += 1
        cseq = self.dialog.cseq
        request = ue._in_dialog("INVITE", self.dialog)
        request.set_body(self.sdp.render(direction), "application/sdp")
        self.sdp_sent.append(request.body)
        response = await ue._send(request)
        self.result.reinvites.append(response.status)
        if 200 <= response.status < 300:
            ue._ack(self.dialog, cseq)
            if response.body:
                self.sdp_received.append(response.body)
                receives = sdp_direction(response.body) in (Direction.SENDRECV,
                                                             Direction.RECVONLY)
                if send and direction in SENDING and receives:
                    self.rtp.resume()
                else:
                    self.rtp.pause()
                if self.rtp.destination is not None:
                    self.rtp.destination = sdp_destination(response.body)
        elif response.status >= 300:
            self.rtp.paused = was_paused  # a refused offer changes nothing (RFC 3264 8)
        return response

    async def hang_up(self) -> CallResult:
        """BYE (once); the RTP counts go into the result."""
        result = self.result
        if self.over or self.dialog is None:
            return result
        self.over = True
        self.rtp.stop()
        self.ue._media.pop(self.dialog.call_id, None)
        result.rtp_sent, result.rtp_received = self.rtp.sent, self.rtp.received
        result.rtp_sources = self.rtp.sources
        self.dialog.cseq += 1
        bye = self.ue._in_dialog("BYE", self.dialog)
        result.ended = (await self.ue._send(bye)).status == 200
        return result
