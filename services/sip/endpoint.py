"""A SIP endpoint: transports + transaction layer + one timer, driving a transaction user (TU).

This is the asyncio glue around the two sans-IO cores: it feeds received messages to the
`TransactionLayer` with the loop's clock, carries out the actions it returns (send, deliver,
time out) and arms a single loop timer for the layer's earliest deadline. The sbc, the test
UAS and loadgen's UEs are TUs on top of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from services.sip.errors import ParseError
from services.sip.message import Message, Request, Response, make_response
from services.sip.transaction import (
    Action,
    ClientTx,
    Deliver,
    Send,
    ServerTx,
    StrayResponse,
    Terminated,
    Timeout,
    TimerConfig,
    TransactionLayer,
    TransportError,
)
from services.sip.transport import Address, SipTransport, Source, response_destination

log = logging.getLogger("volte.sip.endpoint")


class TransactionUser(Protocol):
    """What the application above the transaction layer implements."""

    def on_request(self, request: Request, tx: ServerTx | None, source: Source) -> None:
        """A new request (tx set), or an ACK for a 2xx (tx None): RFC 3261 section 17.2.3."""

    def on_response(self, response: Response, tx: ClientTx | None, source: Source) -> None:
        """A response to our request (tx set), or a stray one, e.g. a 2xx retransmission."""

    def on_timeout(self, tx: ClientTx | ServerTx) -> None:
        """Timer B/F (no answer: act as if 408) or H (no ACK came)."""


def reliable(source: Source) -> bool:
    return source.transport != "UDP"


class SipEndpoint:
    def __init__(
        self,
        tu: TransactionUser,
        *,
        timers: TimerConfig | None = None,
        auto_trying: bool = True,
    ) -> None:
        self.tu = tu
        self.transport = SipTransport(self._on_message)
        self.layer = TransactionLayer(timers, auto_trying=auto_trying)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[None]] = set()

    async def listen(
        self, host: str, port: int, *, udp: bool = True, tcp: bool = True, reuse_port: bool = False
    ) -> Address:
        """Listen on UDP and/or TCP on the same port (port 0: the UDP socket picks it)."""
        if not (udp or tcp):
            raise ValueError("listen on UDP, TCP or both")
        self._loop = asyncio.get_running_loop()
        # With port 0 the number the UDP socket got may be taken for TCP: try a few.
        attempts = 10 if port == 0 and udp and tcp else 1
        for attempt in range(attempts):
            bound: Address | None = None
            chosen = port
            if udp:
                bound = await self.transport.listen_udp(host, chosen, reuse_port=reuse_port)
                chosen = bound[1]
            if not tcp:
                return bound  # type: ignore[return-value]
            try:
                tcp_bound = await self.transport.listen_tcp(host, chosen, reuse_port=reuse_port)
            except OSError:
                if attempt == attempts - 1:
                    raise
                if bound is not None:
                    self.transport.close_udp(bound)
                continue
            return bound or tcp_bound
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.transport.close()

    @property
    def now(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    # -- the TU's calls -------------------------------------------------------------------------
    def respond(self, tx: ServerTx, response: Response) -> None:
        self._run(self.layer.send_response(tx, response, self.now))

    def reply(self, tx: ServerTx, status: int, reason: str | None = None, **kw: Any) -> Response:
        """Build and send a response to the transaction's request."""
        response = make_response(tx.request, status, reason, **kw)
        self.respond(tx, response)
        return response

    def send_request(self, request: Request, peer: Source) -> ClientTx:
        """Start a client transaction towards `peer` (flow set: over that connection)."""
        tx, actions = self.layer.send_request(request, self.now, reliable(peer), peer=peer)
        self._run(actions)
        return tx

    def send_stateless(self, message: Message, peer: Source) -> None:
        """Send outside any transaction: ACK for 2xx, a proxy's forwarded 2xx retransmission."""
        self._send(message, peer)

    # -- network -> layer -----------------------------------------------------------------------
    def _on_message(self, message: Message, source: Source) -> None:
        try:
            if isinstance(message, Request):
                actions = self.layer.receive_request(
                    message, self.now, reliable(source), peer=source
                )
            else:
                assert isinstance(message, Response)
                actions = self.layer.receive_response(message, self.now)
        except ParseError as exc:  # a header only the transaction layer reads (To tag)
            log.warning("malformed SIP message dropped", extra={"reason": exc.reason})
            if isinstance(message, Request) and message.method != "ACK":
                self._send(make_response(message, exc.status, exc.reason), source)
            return
        self._run(actions, source)

    def _run(self, actions: Iterable[Action], source: Source | None = None) -> None:
        for action in actions:
            if isinstance(action, Send):
                tx = action.transaction
                peer = tx.peer if tx is not None else source
                assert isinstance(peer, Source)
                self._send(action.message, peer)
            elif isinstance(action, Deliver):
                self._deliver(action, source)
            elif isinstance(action, StrayResponse):
                if source is not None:
                    self.tu.on_response(action.message, None, source)
            elif isinstance(action, Timeout | TransportError):
                self.tu.on_timeout(action.transaction)  # type: ignore[arg-type]
            elif isinstance(action, Terminated):
                pass
        self._rearm()

    def _deliver(self, action: Deliver, source: Source | None) -> None:
        tx = action.transaction
        message = action.message
        where = source if source is not None else tx.peer if tx is not None else None
        assert isinstance(where, Source)
        if isinstance(message, Request):
            self.tu.on_request(message, tx, where)  # type: ignore[arg-type]
        else:
            self.tu.on_response(message, tx, where)  # type: ignore[arg-type]

    def _send(self, message: Message, peer: Source) -> None:
        data = message.to_bytes()
        if isinstance(message, Response) and peer.transport == "UDP":
            self.transport.send_udp(data, response_destination(message.top_via), peer.local)
        elif peer.transport == "UDP":
            self.transport.send_udp(data, peer.remote, peer.local if peer.local[1] else None)
        elif peer.flow and self.transport.send_on_flow(data, peer.flow):
            pass
        else:
            task = asyncio.ensure_future(self._send_tcp(data, peer.remote))
            self._pending.add(task)  # keep a reference until the connection attempt ends
            task.add_done_callback(self._pending.discard)

    async def _send_tcp(self, data: bytes, remote: Address) -> None:
        try:
            await self.transport.send_tcp(data, remote)
        except OSError as exc:
            peer = f"{remote[0]}:{remote[1]}"
            log.info("TCP send failed", extra={"peer": peer, "error": str(exc)})

    # -- the one timer --------------------------------------------------------------------------
    def _rearm(self) -> None:
        when = self.layer.next_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            loop = self._loop or asyncio.get_running_loop()
            self._timer = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run(self.layer.handle_timer(self.now))
