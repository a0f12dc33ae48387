"""The UE under load: `loadgen.ue.Ue` plus what a load run needs to measure and to vary.

`LoadUe` keeps `Ue`'s REGISTER with digest auth and adds:
- outgoing calls driven step by step with a timeline (`OutgoingCall`: INVITE and every
  provisional, the final answer, ACK, CANCEL, BYE, each with its time after the INVITE);
- the terminating side's behaviour per call, planned by the caller's side of the engine
  (`plans[call_id]`): answer (180, 200 with SDP and RTP), busy (486) or ring until CANCELled
  (180, then 487);
- failover to the secondary P-CSCF when a REGISTER gets no answer or a 5xx at the primary;
- a count of the retransmissions its transactions made (timer A/E/G firings), by method
  (requests) or status (responses).

A call whose media is on sends G.711-sized RTP both ways (loadgen.rtp) and the engine counts
what arrived on each side when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from loadgen.config import CallKind
from loadgen.rtp import RtpStream
from loadgen.ue import SDP_TEMPLATE, Ue, UeError, sdp_destination
from services.sip.digest import Challenge, answer
from services.sip.headers import Headers
from services.sip.message import Request, Response, make_response
from services.sip.transaction import (
    ClientTransaction,
    ClientTx,
    ServerTx,
    TransactionLayer,
)
from services.sip.transport import Address, Source

BYE_TIMEOUT = 32.0  # Timer F
EARLY = 0.005  # a timer this close to its time counts as due
_tags = itertools.count(1)


@dataclass
class Terminating:
    """A call this UE is the callee of."""

    tx: ServerTx
    tag: str
    state: str  # "ringing", "answered", "busy", "cancelled"
    rtp: RtpStream | None = None
    bye_at: float | None = None  # loop time the BYE reached us


@dataclass
class CallRecord:
    """One call as the caller saw it; times are loop times, events ms after the INVITE."""

    kind: CallKind
    caller: str
    callee: str
    call_id: str
    started: float = 0.0
    events: list[tuple[str, float]] = field(default_factory=list)
    status: int = 0  # the INVITE's final status (0: none)
    trying_ms: float | None = None
    ringing_ms: float | None = None
    answered_ms: float | None = None
    setup_done: float | None = None  # when the setup outcome was known
    established: float | None = None  # when the 200 came
    bye_sent: float | None = None
    bye_status: int | None = None  # None: no BYE sent
    bye_ms: float | None = None
    dropped: bool = False  # the network sent us a BYE
    rtp_sent: int = 0
    rtp_received: int = 0  # by the caller
    callee_rtp_sent: int = 0
    callee_rtp_received: int = 0
    bearer_ok: bool | None = None  # None: not checked
    cause: str | None = None  # why it failed; None: it did what its kind says

    def event(self, what: str, at: float) -> None:
        self.events.append((what, round((at - self.started) * 1000, 3)))

    @property
    def setup_ok(self) -> bool:
        expected = {CallKind.NORMAL: 200, CallKind.BUSY: 486, CallKind.CANCEL: 487}[self.kind]
        return self.status == expected or (self.kind == CallKind.NORMAL and
                                           200 <= self.status < 300)

    def as_dict(self) -> dict[str, object]:
        return {
            "call_id": self.call_id, "kind": self.kind.value, "caller": self.caller,
            "callee": self.callee, "status": self.status, "cause": self.cause,
            "ok": self.cause is None, "events": [[what, ms] for what, ms in self.events],
            "rtp": {"caller_sent": self.rtp_sent, "caller_received": self.rtp_received,
                    "callee_sent": self.callee_rtp_sent,
                    "callee_received": self.callee_rtp_received},
            "bearer_ok": self.bearer_ok,
        }


class LoadUe(Ue):
    def __init__(
        self,
        number: str,
        password: str,
        *,
        domain: str,
        proxies: Sequence[Address],
        retransmissions: Counter[str],
    ) -> None:
        super().__init__(number, password, domain=domain, proxy=proxies[0])
        self.proxies = list(proxies)
        self.proxy_index = 0
        self.moved = False  # went to another P-CSCF because the one before stopped answering
        self.endpoint.layer = TransactionLayer(retransmissions=retransmissions)
        self.plans: dict[str, CallKind] = {}  # call-id -> how to answer it (callee side)
        self.ring_time = 0.0  # seconds a normal call rings before we answer
        self.ring_limit = 32.0  # a call left ringing gets 480 then
        self.rtp_limit = 60.0  # seconds of RTP at most on a call we answer
        self.terminating: dict[str, Terminating] = {}
        self.originating: dict[str, OutgoingCall] = {}
        self._mine: dict[ClientTx, Mailbox] = {}
        # INVITE tx -> what takes its provisional responses without waking the call's task
        self._provisional_to: dict[ClientTx, Callable[[Response], None]] = {}
        self._acks: dict[ClientTx, Request] = {}  # INVITE tx -> its ACK, for 2xx re-sends
        self.registered_at: float | None = None
        self._answering: set[asyncio.Task[None]] = set()

    # -- registration --------------------------------------------------------------------------
    async def register_with_failover(self, expires: int, timeout: float) -> tuple[str | None, int]:
        """REGISTER at the current P-CSCF; on no answer or a 5xx, at the next one. Returns
        (failure cause or None, how many times we moved to another P-CSCF)."""
        cause, moves = await self._with_failover(lambda: self._register_once(expires, timeout))
        if cause is None:
            self.registered_at = time.monotonic()
        return cause, moves

    async def clear_bindings(self, timeout: float) -> tuple[str | None, int]:
        """REGISTER `Contact: *` with Expires 0 (RFC 3261 10.2.2): every binding of our AOR
        goes, those an earlier run left behind included (the sbc forks a call to each binding
        and waits for them all). Moves on to the next P-CSCF as REGISTER does."""
        return await self._with_failover(lambda: self._clear_once(timeout))

    async def _with_failover(
        self, attempt: Callable[[], Awaitable[str | None]]
    ) -> tuple[str | None, int]:
        moves = 0
        for tried in range(len(self.proxies)):
            cause = await attempt()
            retry = cause is not None and (cause in ("timeout", "transport")
                                           or cause.startswith("status_5"))
            if not retry or tried == len(self.proxies) - 1:
                return cause, moves
            self.next_pcscf()
            moves += 1
        return "unreachable", moves

    def next_pcscf(self) -> None:
        """Send to the next P-CSCF of the list from now on (primary -> secondary -> ...)."""
        self.proxy_index = (self.proxy_index + 1) % len(self.proxies)
        self.proxy = self.proxies[self.proxy_index]
        self.moved = True

    async def _clear_once(self, timeout: float) -> str | None:
        uri = f"sip:{self.domain}"
        call = os.urandom(8).hex()
        tag = f"x{next(_tags)}"
        auth: list[tuple[str, str]] = []
        status = 0
        for cseq in (1, 2):
            request = self._request("REGISTER", uri, to=f"<{self.aor}>", call_id=call,
                                    cseq=cseq, from_tag=tag, extra=[("Expires", "0"), *auth])
            request.headers.set("Contact", "*")
            response = await self.transact(request, timeout)
            if response is None:
                return "timeout"
            status = response.status
            if status != 401:
                break
            challenge = Challenge.parse(response.headers.get("www-authenticate") or "")
            creds = answer(challenge, username=self.number, password=self.password,
                           method="REGISTER", uri=uri, nc=1)
            auth = [("Authorization", creds.header_value())]
        return None if status == 200 else f"status_{status}"

    async def unregister(self, timeout: float) -> bool:
        """Remove our binding (REGISTER Expires 0 for our Contact)."""
        try:
            response = await asyncio.wait_for(self.register(0), timeout)
        except (TimeoutError, UeError, OSError):
            return False
        self.registered_at = None
        return response.status == 200

    async def transact(self, request: Request, timeout: float) -> Response | None:
        """Send a non-INVITE request; its final response, or None (no answer in time)."""
        queue = Mailbox()
        tx = self.send_tracked(request, queue)
        deadline = time.monotonic() + timeout
        try:
            while True:
                _, response = await queue.get(deadline - time.monotonic())
                if response is None or response.status >= 200:
                    return response
        except TimeoutError:
            return None
        finally:
            self.forget(tx)

    async def _register_once(self, expires: int, timeout: float) -> str | None:
        try:
            response = await asyncio.wait_for(self.register(expires), timeout)
        except (TimeoutError, UeError):
            return "timeout"
        except OSError:
            return "transport"
        return None if response.status == 200 else f"status_{response.status}"

    # -- requests we send in calls -------------------------------------------------------------
    def send_tracked(self, request: Request, queue: Mailbox) -> ClientTx:
        """Start a client transaction whose responses (and timeout, as None) go to `queue`."""
        tx = self.endpoint.send_request(request, Source("UDP", self.proxy, self.local))
        self._mine[tx] = queue
        return tx

    def forget(self, *txs: ClientTx) -> None:
        for tx in txs:
            self._mine.pop(tx, None)
            self._acks.pop(tx, None)
            self._provisional_to.pop(tx, None)

    def send_ack(self, invite_tx: ClientTx, ack: Request) -> None:
        self._acks[invite_tx] = ack
        self.endpoint.send_stateless(ack, Source("UDP", self.proxy, self.local))

    # -- TransactionUser -----------------------------------------------------------------------
    def on_response(self, response: Response, tx: ClientTx | None, source: Source) -> None:
        if tx is not None and tx in self._mine:
            ack = self._acks.get(tx)
            if ack is not None and 200 <= response.status < 300:
                # a 2xx re-sent (our ACK was lost or late): ACK it again (RFC 3261 13.2.2.4)
                self.endpoint.send_stateless(ack, Source("UDP", self.proxy, self.local))
                return
            if response.status < 200:
                take = self._provisional_to.get(tx)
                if take is not None:
                    take(response)
                    return
            self._mine[tx].put_nowait((tx, response))
            return
        super().on_response(response, tx, source)

    def on_timeout(self, tx: ClientTx | ServerTx) -> None:
        if isinstance(tx, ClientTransaction) and tx in self._mine:
            self._mine[tx].put_nowait((tx, None))
            return
        super().on_timeout(tx)

    def on_request(self, request: Request, tx: ServerTx | None, source: Source) -> None:
        if tx is None:
            return  # the ACK for a 2xx of ours
        method = request.method
        if method == "INVITE" and request.to.tag is None:
            self._incoming(request, tx)
        elif method == "BYE":
            self._bye(request, tx)
        elif method == "CANCEL":
            self._cancelled(request, tx)
        else:
            super().on_request(request, tx, source)

    # -- the callee's side ---------------------------------------------------------------------
    def _incoming(self, request: Request, tx: ServerTx) -> None:
        call_id = request.call_id
        plan = self.plans.get(call_id, CallKind.NORMAL)
        previous = self.terminating.pop(call_id, None)
        if previous is not None and previous.rtp is not None:
            previous.rtp.stop()  # the same call again by another path: keep the newest
        tag = f"t{next(_tags)}"
        if plan == CallKind.BUSY:
            self.terminating[call_id] = Terminating(tx, tag, "busy")
            self.endpoint.reply(tx, 486, to_tag=tag)
            return
        extra = [*self._record_route(request), ("Contact", self._contact())]
        self.endpoint.reply(tx, 180, to_tag=tag, extra=extra)
        call = Terminating(tx, tag, "ringing")
        self.terminating[call_id] = call
        loop = asyncio.get_running_loop()
        if plan == CallKind.CANCEL:
            loop.call_later(self.ring_limit, self._give_up, call)
        else:
            task = loop.create_task(self._answer_after(request, call, self.ring_time))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    @staticmethod
    def _record_route(request: Request) -> list[tuple[str, str]]:
        return [("Record-Route", v) for v in request.headers.get_all("record-route")]

    def _give_up(self, call: Terminating) -> None:
        if call.state == "ringing" and not call.tx.terminated:
            call.state = "cancelled"
            self.endpoint.reply(call.tx, 480, to_tag=call.tag)

    async def _answer_after(self, request: Request, call: Terminating, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if call.state != "ringing" or call.tx.terminated:
            return
        port = 40002
        if self.media:
            call.rtp = RtpStream()
            port = (await call.rtp.open(self.local[0]))[1]
            if call.state != "ringing":  # cancelled meanwhile
                call.rtp.stop()
                return
        session = int(time.time())
        body = SDP_TEMPLATE.format(sess=session, ip=self.local[0], port=port).encode()
        extra = [*self._record_route(request), ("Contact", self._contact())]
        self.endpoint.respond(call.tx, make_response(request, 200, to_tag=call.tag, extra=extra,
                                                     body=body, content_type="application/sdp"))
        call.state = "answered"
        self.calls_answered += 1
        if call.rtp is not None:
            try:
                call.rtp.start(sdp_destination(request.body), self.rtp_limit)
            except (ValueError, IndexError):
                call.rtp.stop()

    def _bye(self, request: Request, tx: ServerTx) -> None:
        call_id = request.call_id
        now = time.monotonic()
        self.byes_received += 1
        known = False
        term = self.terminating.get(call_id)
        if term is not None:
            known = True
            term.bye_at = now
            if term.rtp is not None:
                term.rtp.stop()
        outgoing = self.originating.get(call_id)
        if outgoing is not None:
            known = True
            outgoing.dropped_by_network(now)
        self.endpoint.reply(tx, 200 if known else 481)

    def _cancelled(self, request: Request, tx: ServerTx) -> None:
        target = self.endpoint.layer.find_cancel_target(request)
        if target is None:
            self.endpoint.reply(tx, 481)
            return
        self.endpoint.reply(tx, 200)
        call = self.terminating.get(request.call_id)
        if call is not None and call.state == "ringing" and call.tx is target:
            call.state = "cancelled"
            if call.rtp is not None:
                call.rtp.stop()
            self.endpoint.reply(target, 487, to_tag=call.tag)

    def finish_terminating(self, call_id: str) -> Terminating | None:
        self.plans.pop(call_id, None)
        call = self.terminating.pop(call_id, None)
        if call is not None and call.rtp is not None:
            call.rtp.stop()
        return call


class OutgoingCall:
    """One call placed by a LoadUe: `setup()` until the outcome of the INVITE, then (when
    answered) `wait(hold)` and `hang_up()`."""

    def __init__(self, ue: LoadUe, record: CallRecord, *, media: bool,
                 target: str | None = None) -> None:
        self.ue = ue
        self.record = record
        self.media = media
        self.rtp: RtpStream | None = None
        self.target = target or f"sip:{record.callee}@{ue.domain}"  # the Request-URI
        self.tag = f"o{next(_tags)}"
        self.invite_tx: ClientTx | None = None
        self.invite: Request | None = None
        self.remote_tag = ""
        self.remote_target = ""
        self.route: list[str] = []
        self._talking: asyncio.Future[None] | None = None  # wait(): ends early on a drop

    def dropped_by_network(self, now: float) -> None:
        if not self.record.dropped and self.record.established is not None:
            self.record.dropped = True
            self.record.event("BYE from network", now)
            if self._talking is not None and not self._talking.done():
                self._talking.set_result(None)

    async def setup(self, timeout: float, cancel_after: float | None = None,
                    rtp_seconds: float = 60.0) -> None:
        """INVITE until a final answer, or `timeout`; with `cancel_after`, CANCEL that many
        seconds after the first 180. On a 2xx: ACK, and RTP starts when media is on."""
        ue, rec = self.ue, self.record
        port = 40000
        if self.media:
            self.rtp = RtpStream()
            port = (await self.rtp.open(ue.local[0]))[1]
        body = SDP_TEMPLATE.format(sess=int(time.time()), ip=ue.local[0], port=port).encode()
        invite = ue._request("INVITE", self.target, to=f"<{self.target}>", call_id=rec.call_id,
                             cseq=1, from_tag=self.tag, body=body)
        self.invite = invite
        queue = Mailbox()
        ue.originating[rec.call_id] = self
        rec.started = time.monotonic()
        rec.event("INVITE", rec.started)
        tx = self.invite_tx = ue.send_tracked(invite, queue)
        if cancel_after is None:  # nothing to do on a 1xx but note it: the task sleeps on
            ue._provisional_to[tx] = self._provisional
        deadline = rec.started + timeout
        cancel_at: float | None = None
        cancel_tx: ClientTx | None = None
        final: Response | None = None
        try:
            while final is None:
                now = time.monotonic()
                wake = deadline if cancel_at is None or cancel_tx else min(deadline, cancel_at)
                try:
                    got_tx, response = await queue.get(wake - now)
                except TimeoutError:
                    now = time.monotonic()
                    # (the loop's timers may wake a millisecond early)
                    if cancel_at is not None and cancel_tx is None and now >= cancel_at - EARLY:
                        cancel_tx = self._cancel(queue, now)
                        deadline = max(deadline, now + BYE_TIMEOUT)
                        continue
                    if now < deadline:
                        continue
                    rec.cause = "timeout"
                    provisional = rec.ringing_ms is not None or rec.trying_ms is not None
                    if provisional and cancel_tx is None:
                        self._cancel(queue, now)
                    break
                now = time.monotonic()
                if got_tx is not tx:  # the CANCEL's transaction
                    rec.event("CANCEL " + (str(response.status) if response else "timeout"), now)
                    continue
                if response is None:  # timer B
                    rec.cause = "timeout"
                    break
                status = response.status
                if status < 200:
                    self._provisional(response, now)
                    if status > 100 and cancel_after is not None and cancel_at is None:
                        cancel_at = now + cancel_after
                    continue
                final = response
                rec.status = status
                rec.setup_done = now
                rec.event(str(status), now)
        finally:
            if final is None or final.status >= 300:
                ue.forget(tx)
                if cancel_tx is not None:
                    ue.forget(cancel_tx)
        if final is None:
            rec.setup_done = time.monotonic()
            self._close_rtp()
            return
        if final.status >= 300:
            self._close_rtp()
            if not rec.setup_ok:
                rec.cause = f"status_{final.status}"
            return
        if cancel_tx is not None:
            ue.forget(cancel_tx)
        # 2xx: the dialog (RFC 3261 12.1.2), ACK, media.
        rec.answered_ms = (rec.setup_done - rec.started) * 1000 if rec.setup_done else None
        rec.established = rec.setup_done
        self.remote_tag = final.to.tag or ""
        contacts = final.contacts or []
        self.remote_target = str(contacts[0].uri) if contacts else self.target
        self.route = list(reversed(final.headers.values("record-route")))
        ack = self._in_dialog("ACK", 1)
        ue.send_ack(tx, ack)
        rec.event("ACK", time.monotonic())
        if not rec.setup_ok:  # a 2xx to a call meant to be busy or cancelled
            rec.cause = f"unexpected_{final.status}"
        if self.rtp is not None:
            try:
                self.rtp.start(sdp_destination(final.body), rtp_seconds)
            except (ValueError, IndexError):
                rec.cause = rec.cause or "bad_sdp"

    def _provisional(self, response: Response, now: float | None = None) -> None:
        rec = self.record
        now = time.monotonic() if now is None else now
        status = response.status
        rec.event(str(status), now)
        ms = (now - rec.started) * 1000
        if status == 100 and rec.trying_ms is None:
            rec.trying_ms = ms
        elif status == 180 and rec.ringing_ms is None:
            rec.ringing_ms = ms

    def _cancel(
        self, queue: Mailbox, now: float
    ) -> ClientTx:
        """CANCEL the INVITE (RFC 3261 9.1): its Request-URI, top Via, Route, From, To,
        Call-ID and CSeq number."""
        assert self.invite is not None
        h = self.invite.headers
        headers = [("Via", h.first_value("via") or "")]
        headers += [("Route", v) for v in h.values("route")]
        headers += [("Max-Forwards", "70"), ("From", h.get("from") or ""),
                    ("To", h.get("to") or ""), ("Call-ID", self.record.call_id),
                    ("CSeq", f"{self.invite.cseq.seq} CANCEL")]
        cancel = Request("CANCEL", self.invite.uri_text, Headers.of(headers))
        self.record.event("CANCEL", now)
        return self.ue.send_tracked(cancel, queue)

    def _in_dialog(self, method: str, cseq: int) -> Request:
        return self.ue._request(
            method, self.remote_target, to=f"<{self.target}>;tag={self.remote_tag}",
            call_id=self.record.call_id, cseq=cseq, from_tag=self.tag,
            extra=[("Route", r) for r in self.route],
        )

    async def wait(self, hold: float) -> None:
        """Talk for `hold` seconds (less if the network hangs up)."""
        if self.record.dropped:
            return
        loop = asyncio.get_running_loop()
        talking = self._talking = loop.create_future()
        timer = loop.call_later(hold, _resolve, talking)
        try:
            await talking
        finally:
            timer.cancel()
            self._talking = None

    async def hang_up(self) -> None:
        """BYE (unless the network ended the call); RTP counts go into the record."""
        ue, rec = self.ue, self.record
        self._close_rtp()
        try:
            if rec.dropped or self.invite_tx is None:
                return
            rec.bye_sent = time.monotonic()
            rec.event("BYE", rec.bye_sent)
            response = await ue.transact(self._in_dialog("BYE", 2), BYE_TIMEOUT)
            status = response.status if response is not None else 0
            now = time.monotonic()
            rec.bye_status = status
            rec.bye_ms = (now - rec.bye_sent) * 1000
            rec.event(f"BYE {status}" if status else "BYE timeout", now)
        finally:
            if self.invite_tx is not None:
                ue.forget(self.invite_tx)
            ue.originating.pop(rec.call_id, None)

    def _close_rtp(self) -> None:
        if self.rtp is not None:
            self.rtp.stop()
            self.record.rtp_sent = self.rtp.sent
            self.record.rtp_received = self.rtp.received

    def abandon(self) -> None:
        """The run is over before the call is: drop what it holds."""
        self._close_rtp()
        if self.invite_tx is not None:
            self.ue.forget(self.invite_tx)
        self.ue.originating.pop(self.record.call_id, None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Mailbox:
    """What one exchange's transactions report to the task driving it, in order: (transaction,
    response), or (transaction, None) when it timed out. A deque and one waiter with one timer:
    what `wait_for(asyncio.Queue().get(), timeout)` does, for a fraction of its cost (a queue
    with its Event, a task per get or a timeout scope), as this runs for every response of
    every call."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[tuple[ClientTx, Response | None]] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: tuple[ClientTx, Response | None]) -> None:
        self._items.append(item)
        if self._waiter is not None:
            _resolve(self._waiter)

    async def get(self, timeout: float) -> tuple[ClientTx, Response | None]:
        """The next item within `timeout` seconds, else TimeoutError."""
        if not self._items:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(max(0.0, timeout), _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items:
                raise TimeoutError
        return self._items.popleft()


def call_id() -> str:
    return os.urandom(10).hex()
