"""SIP transactions (RFC 3261 section 17, with the RFC 6026 corrections), sans-IO.

Each of the four transaction kinds is a state machine written down as a table, h11 style:
state -> trigger -> (next state, what to do). Messages, transport errors and timer expiries go
in together with the current time as a plain number; what must happen comes out as small action
values (`Send`, `Deliver`, `Timeout`, ...). Like aioquic's connection, a transaction never reads
a clock: the caller asks `next_timer()` when to call `handle_timer(now)` next. Nothing here
opens a socket or imports asyncio, so the transports and the sbc drive it through a thin shell
and the tests step through every rule with numbers.

`TransactionLayer` owns the transactions of one SIP element and matches incoming messages to
them (sections 17.1.3 and 17.2.3, RFC 2543 fallback included).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, Flag, auto
from types import MappingProxyType
from typing import Any, Generic, TypeAlias, TypeVar

from services.sip.headers import MAGIC_COOKIE, Headers, Via
from services.sip.message import Request, Response, make_response


class TransactionError(Exception):
    """Our side asked a transaction for something its state machine forbids (a bug in the
    caller, like h11's LocalProtocolError). Unexpected messages from the network never raise:
    the RFC has them absorbed or dropped."""


# --- timers -------------------------------------------------------------------------------


class _Enum(Enum):
    """An Enum hashed by identity, as its members are singletons. Enum.__hash__ is a Python
    function (it hashes the name), and states, triggers and timers are dict and set keys
    several times per message."""

    __hash__ = object.__hash__


class Timer(_Enum):
    """RFC 3261 table 4, RFC 6026's L and M, and the 200 ms wait before an automatic 100."""

    A = "A"  # INVITE request retransmission (unreliable transports)
    B = "B"  # INVITE client gives up waiting for a response
    D = "D"  # INVITE client absorbs retransmitted non-2xx finals
    E = "E"  # non-INVITE request retransmission (unreliable transports)
    F = "F"  # non-INVITE client gives up
    G = "G"  # INVITE server retransmits its non-2xx final (unreliable transports)
    H = "H"  # INVITE server gives up waiting for the ACK
    I = "I"  # noqa: E741 - the RFC's name; INVITE server absorbs ACK retransmissions
    J = "J"  # non-INVITE server absorbs request retransmissions
    K = "K"  # non-INVITE client absorbs response retransmissions
    L = "L"  # INVITE server in Accepted absorbs INVITE retransmissions (RFC 6026)
    M = "M"  # INVITE client in Accepted passes 2xx retransmissions up (RFC 6026)
    TRYING = "100"  # INVITE server sends 100 Trying if the TU has not answered yet


RETRANSMIT_TIMERS = frozenset({Timer.A, Timer.E, Timer.G})
_TIMERS = tuple(Timer)  # definition order; iterating the Enum class itself is slow
_TIMEOUT = 64  # B, F, H, J, L and M are 64*T1


@functools.cache
def _in_order(timers: frozenset[Timer]) -> tuple[Timer, ...]:
    """A state's timers in definition order (a few sets, computed once each)."""
    return tuple(t for t in _TIMERS if t in timers)


@dataclass(frozen=True)
class TimerConfig:
    """T1/T2/T4 (RFC 3261 section 17.1.1.1) and every timer derived from them (table 4)."""

    T1: float = 0.5  # RTT estimate
    T2: float = 4.0  # longest retransmit interval for non-INVITE requests and INVITE responses
    T4: float = 5.0  # longest time a message stays in the network
    D: float = 32.0  # Timer D over unreliable transports: "at least 32 seconds"
    trying_delay: float = 0.2  # the 200 ms of section 17.2.1

    def __post_init__(self) -> None:
        if not 0 < self.T1 <= self.T2:
            raise ValueError("timers need 0 < T1 <= T2")
        if self.T4 < 0 or self.D < 0 or self.trying_delay < 0:
            raise ValueError("T4, D and trying_delay must not be negative")

    def duration(self, timer: Timer, reliable: bool) -> float | None:
        """A timer's initial duration; None where it does not run (retransmissions over
        TCP/TLS), 0 where it fires at once (D, I, J, K over reliable transports)."""
        match timer:
            case Timer.A | Timer.E | Timer.G:
                return None if reliable else self.T1
            case Timer.B | Timer.F | Timer.H | Timer.L | Timer.M:
                return _TIMEOUT * self.T1
            case Timer.J:
                return 0.0 if reliable else _TIMEOUT * self.T1
            case Timer.D:
                return 0.0 if reliable else self.D
            case Timer.I | Timer.K:
                return 0.0 if reliable else self.T4
            case Timer.TRYING:
                return self.trying_delay

    def next_interval(self, timer: Timer, interval: float) -> float:
        """Exponential back-off: A doubles without bound (B stops it), E and G cap at T2."""
        doubled = 2 * interval
        return doubled if timer is Timer.A else min(doubled, self.T2)


DEFAULT_TIMERS = TimerConfig()


# --- actions ------------------------------------------------------------------------------
# What a transaction asks of its caller. Each carries the transaction it comes from, so a
# shell serving many transactions knows where a Send goes (`action.transaction.peer`).


@dataclass(frozen=True, slots=True)
class Send:
    """Hand this message to the transport, towards the transaction's peer."""

    message: Request | Response
    transaction: Transaction[Any] | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """Pass this request or response up to the TU. `transaction` is None for an ACK that
    matched no transaction (the ACK for a 2xx belongs to the dialog, not a transaction)."""

    message: Request | Response
    transaction: Transaction[Any] | None = None


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer B, F or H fired: the TU must act (a proxy answers 408, a UAC gives up)."""

    transaction: Transaction[Any]
    timer: Timer


@dataclass(frozen=True, slots=True)
class TransportError:
    """The transport could not send for this transaction (section 17.1.4, 17.2.4)."""

    transaction: Transaction[Any]


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction ended; the layer has already dropped it from its table."""

    key: TransactionKey
    transaction: Transaction[Any] | None = None


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matches no client transaction: the TU decides (a proxy may forward a
    2xx statelessly, a UA core may re-ACK it); the RFC 6026 Accepted state makes these rare."""

    message: Response


Action: TypeAlias = Send | Deliver | Timeout | TransportError | Terminated | StrayResponse


# --- the state tables ---------------------------------------------------------------------


class Event(_Enum):
    """Triggers other than timers."""

    RECV_1XX = "1xx received"
    RECV_2XX = "2xx received"
    RECV_3XX_6XX = "300-699 received"
    RECV_REQUEST = "request retransmission received"
    RECV_ACK = "ACK received"
    SEND_1XX = "1xx from TU"
    SEND_2XX = "2xx from TU"
    SEND_3XX_6XX = "300-699 from TU"
    TRANSPORT_ERROR = "transport error"


# Messages from the network: when the table has no entry for one, it is dropped, not raised.
REMOTE_EVENTS = frozenset(
    {Event.RECV_1XX, Event.RECV_2XX, Event.RECV_3XX_6XX, Event.RECV_REQUEST, Event.RECV_ACK}
)
_RECV = (Event.RECV_1XX, Event.RECV_2XX, Event.RECV_3XX_6XX)
_SEND = (Event.SEND_1XX, Event.SEND_2XX, Event.SEND_3XX_6XX)


def _status_class(status: int) -> int:
    return 0 if status < 200 else 1 if status < 300 else 2


class Do(Flag):
    """What a transition does, in this order, before the state's timers are set."""

    NOTHING = 0  # absorbed: a retransmission or a late message
    DELIVER = auto()  # pass the message up to the TU
    SEND = auto()  # send the TU's response and keep it for retransmission
    RESEND = auto()  # send the last response again (a request retransmission came in)
    RETRANSMIT = auto()  # a retransmit timer fired: send again and back off
    SEND_ACK = auto()  # acknowledge a non-2xx final (section 17.1.1.3)
    TRYING = auto()  # send 100 Trying for the TU
    TIMEOUT = auto()  # tell the TU: Timeout
    REPORT = auto()  # tell the TU: TransportError


Trigger: TypeAlias = Event | Timer
S = TypeVar("S", bound=Enum)


class Machine(Generic[S]):
    """One RFC figure as data: the transitions, and which timers run in each state.

    Entering a state arms its timers that the previous state did not run and cancels the
    previous state's timers that it does not run, so the timer rules live here too.
    `lingering` are the states that only absorb retransmissions until a timer ends them
    (up to 32 s over UDP): their messages drop what was parsed out of them (see _enter).
    A plain class rather than a frozen dataclass: mypyc cannot compile a generic dataclass.
    """

    __slots__ = ("initial", "lingering", "name", "terminated", "timers", "transitions")

    def __init__(
        self,
        *,
        name: str,
        initial: S,
        terminated: S,
        transitions: Mapping[S, Mapping[Trigger, tuple[S, Do]]],
        timers: Mapping[S, frozenset[Timer]],
        lingering: frozenset[S],
    ) -> None:
        self.name = name
        self.initial = initial
        self.terminated = terminated
        self.transitions = transitions
        self.timers = timers
        self.lingering = lingering


class InviteClientState(_Enum):
    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class NonInviteClientState(_Enum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class InviteServerState(_Enum):
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


class NonInviteServerState(_Enum):
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


_ICS = InviteClientState
_NICS = NonInviteClientState
_ISS = InviteServerState
_NISS = NonInviteServerState
_E = Event
_NONE: frozenset[Timer] = frozenset()

# Transport errors are always reported to the TU; they end a transaction only where the RFC
# figures say so (RFC 6026 section 8.7: never for an INVITE server transaction).

# RFC 3261 figure 5 as corrected by RFC 6026 figure 5.
INVITE_CLIENT = Machine(
    name="INVITE client",
    initial=_ICS.CALLING,
    terminated=_ICS.TERMINATED,
    transitions={
        _ICS.CALLING: {
            Timer.A: (_ICS.CALLING, Do.RETRANSMIT),
            Timer.B: (_ICS.TERMINATED, Do.TIMEOUT),
            _E.RECV_1XX: (_ICS.PROCEEDING, Do.DELIVER),
            _E.RECV_2XX: (_ICS.ACCEPTED, Do.DELIVER),
            _E.RECV_3XX_6XX: (_ICS.COMPLETED, Do.DELIVER | Do.SEND_ACK),
            _E.TRANSPORT_ERROR: (_ICS.TERMINATED, Do.REPORT),
        },
        _ICS.PROCEEDING: {
            _E.RECV_1XX: (_ICS.PROCEEDING, Do.DELIVER),
            _E.RECV_2XX: (_ICS.ACCEPTED, Do.DELIVER),
            _E.RECV_3XX_6XX: (_ICS.COMPLETED, Do.DELIVER | Do.SEND_ACK),
            _E.TRANSPORT_ERROR: (_ICS.TERMINATED, Do.REPORT),
        },
        _ICS.ACCEPTED: {
            _E.RECV_1XX: (_ICS.ACCEPTED, Do.NOTHING),
            _E.RECV_2XX: (_ICS.ACCEPTED, Do.DELIVER),  # every 2xx goes up; the TU ACKs it
            _E.RECV_3XX_6XX: (_ICS.ACCEPTED, Do.NOTHING),
            Timer.M: (_ICS.TERMINATED, Do.NOTHING),
            _E.TRANSPORT_ERROR: (_ICS.ACCEPTED, Do.REPORT),
        },
        _ICS.COMPLETED: {
            _E.RECV_1XX: (_ICS.COMPLETED, Do.NOTHING),
            _E.RECV_2XX: (_ICS.COMPLETED, Do.NOTHING),
            _E.RECV_3XX_6XX: (_ICS.COMPLETED, Do.SEND_ACK),
            Timer.D: (_ICS.TERMINATED, Do.NOTHING),
            _E.TRANSPORT_ERROR: (_ICS.TERMINATED, Do.REPORT),
        },
        _ICS.TERMINATED: {},
    },
    timers={
        _ICS.CALLING: frozenset({Timer.A, Timer.B}),
        _ICS.PROCEEDING: _NONE,
        _ICS.ACCEPTED: frozenset({Timer.M}),
        _ICS.COMPLETED: frozenset({Timer.D}),
        _ICS.TERMINATED: _NONE,
    },
    lingering=frozenset({_ICS.ACCEPTED, _ICS.COMPLETED}),
)

# RFC 3261 figure 6.
NON_INVITE_CLIENT = Machine(
    name="non-INVITE client",
    initial=_NICS.TRYING,
    terminated=_NICS.TERMINATED,
    transitions={
        _NICS.TRYING: {
            Timer.E: (_NICS.TRYING, Do.RETRANSMIT),
            Timer.F: (_NICS.TERMINATED, Do.TIMEOUT),
            _E.RECV_1XX: (_NICS.PROCEEDING, Do.DELIVER),
            _E.RECV_2XX: (_NICS.COMPLETED, Do.DELIVER),
            _E.RECV_3XX_6XX: (_NICS.COMPLETED, Do.DELIVER),
            _E.TRANSPORT_ERROR: (_NICS.TERMINATED, Do.REPORT),
        },
        _NICS.PROCEEDING: {
            Timer.E: (_NICS.PROCEEDING, Do.RETRANSMIT),  # at T2 from now on
            Timer.F: (_NICS.TERMINATED, Do.TIMEOUT),
            _E.RECV_1XX: (_NICS.PROCEEDING, Do.DELIVER),
            _E.RECV_2XX: (_NICS.COMPLETED, Do.DELIVER),
            _E.RECV_3XX_6XX: (_NICS.COMPLETED, Do.DELIVER),
            _E.TRANSPORT_ERROR: (_NICS.TERMINATED, Do.REPORT),
        },
        _NICS.COMPLETED: {
            _E.RECV_1XX: (_NICS.COMPLETED, Do.NOTHING),
            _E.RECV_2XX: (_NICS.COMPLETED, Do.NOTHING),
            _E.RECV_3XX_6XX: (_NICS.COMPLETED, Do.NOTHING),
            Timer.K: (_NICS.TERMINATED, Do.NOTHING),
            _E.TRANSPORT_ERROR: (_NICS.COMPLETED, Do.REPORT),
        },
        _NICS.TERMINATED: {},
    },
    timers={
        _NICS.TRYING: frozenset({Timer.E, Timer.F}),
        _NICS.PROCEEDING: frozenset({Timer.E, Timer.F}),
        _NICS.COMPLETED: frozenset({Timer.K}),
        _NICS.TERMINATED: _NONE,
    },
    lingering=frozenset({_NICS.COMPLETED}),
)

# RFC 3261 figure 7 as corrected by RFC 6026 figure 7.
INVITE_SERVER = Machine(
    name="INVITE server",
    initial=_ISS.PROCEEDING,
    terminated=_ISS.TERMINATED,
    transitions={
        _ISS.PROCEEDING: {
            _E.RECV_REQUEST: (_ISS.PROCEEDING, Do.RESEND),  # the last provisional, if any
            _E.SEND_1XX: (_ISS.PROCEEDING, Do.SEND),
            _E.SEND_2XX: (_ISS.ACCEPTED, Do.SEND),
            _E.SEND_3XX_6XX: (_ISS.COMPLETED, Do.SEND),
            Timer.TRYING: (_ISS.PROCEEDING, Do.TRYING),
            _E.TRANSPORT_ERROR: (_ISS.PROCEEDING, Do.REPORT),
        },
        _ISS.ACCEPTED: {
            _E.RECV_REQUEST: (_ISS.ACCEPTED, Do.NOTHING),  # absorbed, the TU resends 2xx
            _E.RECV_ACK: (_ISS.ACCEPTED, Do.DELIVER),
            _E.SEND_2XX: (_ISS.ACCEPTED, Do.SEND),
            Timer.L: (_ISS.TERMINATED, Do.NOTHING),
            _E.TRANSPORT_ERROR: (_ISS.ACCEPTED, Do.REPORT),
        },
        _ISS.COMPLETED: {
            _E.RECV_REQUEST: (_ISS.COMPLETED, Do.RESEND),
            _E.RECV_ACK: (_ISS.CONFIRMED, Do.NOTHING),
            Timer.G: (_ISS.COMPLETED, Do.RETRANSMIT),
            Timer.H: (_ISS.TERMINATED, Do.TIMEOUT),
            _E.TRANSPORT_ERROR: (_ISS.COMPLETED, Do.REPORT),
        },
        _ISS.CONFIRMED: {
            _E.RECV_REQUEST: (_ISS.CONFIRMED, Do.NOTHING),
            _E.RECV_ACK: (_ISS.CONFIRMED, Do.NOTHING),
            Timer.I: (_ISS.TERMINATED, Do.NOTHING),
            _E.TRANSPORT_ERROR: (_ISS.CONFIRMED, Do.REPORT),
        },
        _ISS.TERMINATED: {},
    },
    timers={
        _ISS.PROCEEDING: frozenset({Timer.TRYING}),
        _ISS.ACCEPTED: frozenset({Timer.L}),
        _ISS.COMPLETED: frozenset({Timer.G, Timer.H}),
        _ISS.CONFIRMED: frozenset({Timer.I}),
        _ISS.TERMINATED: _NONE,
    },
    lingering=frozenset({_ISS.ACCEPTED, _ISS.COMPLETED, _ISS.CONFIRMED}),
)

# RFC 3261 figure 8.
NON_INVITE_SERVER = Machine(
    name="non-INVITE server",
    initial=_NISS.TRYING,
    terminated=_NISS.TERMINATED,
    transitions={
        _NISS.TRYING: {
            _E.RECV_REQUEST: (_NISS.TRYING, Do.NOTHING),
            _E.SEND_1XX: (_NISS.PROCEEDING, Do.SEND),
            _E.SEND_2XX: (_NISS.COMPLETED, Do.SEND),
            _E.SEND_3XX_6XX: (_NISS.COMPLETED, Do.SEND),
            _E.TRANSPORT_ERROR: (_NISS.TERMINATED, Do.REPORT),
        },
        _NISS.PROCEEDING: {
            _E.RECV_REQUEST: (_NISS.PROCEEDING, Do.RESEND),
            _E.SEND_1XX: (_NISS.PROCEEDING, Do.SEND),
            _E.SEND_2XX: (_NISS.COMPLETED, Do.SEND),
            _E.SEND_3XX_6XX: (_NISS.COMPLETED, Do.SEND),
            _E.TRANSPORT_ERROR: (_NISS.TERMINATED, Do.REPORT),
        },
        _NISS.COMPLETED: {
            _E.RECV_REQUEST: (_NISS.COMPLETED, Do.RESEND),
            _E.SEND_2XX: (_NISS.COMPLETED, Do.NOTHING),  # "MUST be discarded"
            _E.SEND_3XX_6XX: (_NISS.COMPLETED, Do.NOTHING),
            Timer.J: (_NISS.TERMINATED, Do.NOTHING),
            _E.TRANSPORT_ERROR: (_NISS.TERMINATED, Do.REPORT),
        },
        _NISS.TERMINATED: {},
    },
    timers={
        _NISS.TRYING: _NONE,
        _NISS.PROCEEDING: _NONE,
        _NISS.COMPLETED: frozenset({Timer.J}),
        _NISS.TERMINATED: _NONE,
    },
    lingering=frozenset({_NISS.COMPLETED}),
)


# --- matching keys ------------------------------------------------------------------------

ViaId: TypeAlias = tuple[str, str, str, int | None, frozenset[tuple[str, str | None]]]


@dataclass(frozen=True, slots=True)
class Rfc2543Id:
    """What identifies a transaction whose top Via has no RFC 3261 branch (section 17.2.3)."""

    request_uri: str
    to_tag: str | None
    from_tag: str | None
    call_id: str
    cseq: int
    via: ViaId  # the whole top Via, host case-folded


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """The table key of a transaction.

    RFC 3261 peers: branch + method (client side) or branch + sent-by + method (server side).
    RFC 2543 peers: `rfc2543` instead of a branch. ACK is counted as INVITE, so an ACK for a
    non-2xx final finds its INVITE server transaction; CANCEL keeps its own method.
    """

    method: str
    branch: str | None = None
    sent_by: str | None = None
    rfc2543: Rfc2543Id | None = None


def _sent_by(via: Via) -> str:
    host = via.host.lower()
    return host if via.port is None else f"{host}:{via.port}"


def _via_id(via: Via) -> ViaId:
    return (via.protocol, via.transport, via.host.lower(), via.port, frozenset(via.params.items()))


def _rfc2543_key(request: Request, method: str, to_tag: str | None) -> TransactionKey:
    ident = Rfc2543Id(
        request_uri=request.uri_text,
        to_tag=to_tag,
        from_tag=request.from_.tag,
        call_id=request.call_id,
        cseq=request.cseq.seq,
        via=_via_id(request.top_via),
    )
    return TransactionKey(method, rfc2543=ident)


def client_key(message: Request | Response) -> TransactionKey:
    """Section 17.1.3: the top Via branch and the CSeq method (of a response, or of the request
    that creates the client transaction)."""
    return TransactionKey(message.cseq.method, message.top_via.branch)


def server_key(request: Request) -> TransactionKey:
    """Section 17.2.3: branch, sent-by and method (ACK as INVITE) when the branch carries the
    magic cookie and something after it (RFC 4475 section 3.2.1: the bare cookie does not
    count); otherwise the RFC 2543 fields. For an RFC 2543 ACK this key only finds an INVITE
    that already had the To tag; `TransactionLayer.find_server` applies the full ACK rule."""
    method = "INVITE" if request.method == "ACK" else request.method
    via = request.top_via
    if via.has_rfc3261_branch:
        return TransactionKey(method, via.branch, _sent_by(via))
    return _rfc2543_key(request, method, request.to.tag)


def cancel_target_key(cancel: Request) -> TransactionKey:
    """Section 9.2: the key of the INVITE server transaction a CANCEL refers to (the CANCEL's
    own key with the method taken as INVITE)."""
    via = cancel.top_via
    if via.has_rfc3261_branch:
        return TransactionKey("INVITE", via.branch, _sent_by(via))
    return _rfc2543_key(cancel, "INVITE", cancel.to.tag)


def new_branch(rng: random.Random | None = None) -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits (seedable for tests)."""
    token = secrets.token_hex(8) if rng is None else f"{rng.getrandbits(64):016x}"
    return MAGIC_COOKIE + token


def make_ack(request: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a non-2xx final (section 17.1.1.3)."""
    h = request.headers
    out = Headers()
    out.add("Via", h.first_value("via") or "")
    for route in h.get_all("route"):
        out.add("Route", route)
    out.add("Max-Forwards", "70")
    out.add("From", h.get("from") or "")
    out.add("To", response.headers.get("to") or "")
    out.add("Call-ID", request.call_id)
    out.add("CSeq", f"{request.cseq.seq} ACK")
    out.add("Content-Length", "0")
    return Request("ACK", request.uri_text, out)


# --- the transactions ---------------------------------------------------------------------


class Transaction(Generic[S]):
    """What the four machines share: walking the table, the timers, retransmission."""

    # Slots: thousands live at once (32 s each over UDP), each a dict less for the collector.
    __slots__ = (
        "__weakref__",
        "_ack",
        "_deadlines",
        "_intervals",
        "_outgoing",
        "_started",
        "_state",
        "config",
        "key",
        "machine",
        "peer",
        "reliable",
        "request",
    )

    def __init__(
        self,
        machine: Machine[S],
        request: Request,
        key: TransactionKey,
        *,
        reliable: bool,
        config: TimerConfig | None,
        peer: object,
    ) -> None:
        self.machine = machine
        self.request = request
        self.key = key
        self.reliable = reliable
        self.config = config if config is not None else DEFAULT_TIMERS
        self.peer = peer  # opaque here: where the request goes to or came from
        self._state = machine.initial
        self._started = False
        self._deadlines: dict[Timer, float] = {}
        self._intervals: dict[Timer, float] = {}
        self._outgoing: Request | Response | None = None  # what RESEND/RETRANSMIT send
        self._ack: Request | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self._state.value}>"

    @property
    def state(self) -> S:
        return self._state

    @property
    def terminated(self) -> bool:
        return self._state is self.machine.terminated

    def deadline(self, timer: Timer) -> float | None:
        """When `timer` fires, None when it is not running."""
        return self._deadlines.get(timer)

    def next_timer(self) -> float | None:
        """The earliest deadline: call `handle_timer` then."""
        return min(self._deadlines.values(), default=None)

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer due at `now`, earliest first, except that a due timer ending the
        state (B, F, H, D...) wins over due retransmissions: when a late caller reaches a
        transaction that should have ended already, nothing stale is resent."""
        out: list[Action] = []
        while True:
            due = [(t in RETRANSMIT_TIMERS, when, t) for t, when in self._deadlines.items()]
            due = [d for d in due if d[1] <= now]
            if not due:
                return out
            timer = min(due, key=lambda d: (d[0], d[1]))[2]
            del self._deadlines[timer]
            out += self._handle(timer, now)

    def transport_error(self, now: float) -> list[Action]:
        """The transport failed to send for this transaction."""
        return self._handle(Event.TRANSPORT_ERROR, now)

    # -- the engine --------------------------------------------------------------------------

    def _begin(self, first: Action, now: float) -> list[Action]:
        if self._started:
            raise TransactionError(f"{self!r} already started")
        self._started = True
        return [first, *self._enter(_NONE, now)]

    def _handle(
        self, trigger: Trigger, now: float, message: Request | Response | None = None
    ) -> list[Action]:
        if not self._started:
            raise TransactionError(f"{self!r} not started")
        if self.terminated:
            raise TransactionError(f"{self!r} is terminated: {trigger.value}")
        entry = self.machine.transitions[self._state].get(trigger)
        if entry is None:
            if trigger in REMOTE_EVENTS:
                return []  # a message the RFC has no use for in this state: dropped
            raise TransactionError(
                f"{trigger.value!r} not allowed in state {self._state.value} "
                f"of the {self.machine.name} transaction"
            )
        new, do = entry
        old = self._state
        self._state = new
        out = self._perform(do, trigger, message, now)
        if new is not old:
            out += self._enter(self.machine.timers[old], now)
        return out

    def _perform(
        self, do: Do, trigger: Trigger, message: Request | Response | None, now: float
    ) -> list[Action]:
        out: list[Action] = []
        if Do.DELIVER in do:
            assert message is not None
            out.append(Deliver(message, self))
        if Do.SEND in do:
            assert message is not None
            self._deadlines.pop(Timer.TRYING, None)  # the TU answered: no automatic 100
            self._outgoing = message
            out.append(Send(message, self))
        if Do.RESEND in do and self._outgoing is not None:
            out.append(Send(self._outgoing, self))
        if Do.RETRANSMIT in do:
            assert isinstance(trigger, Timer) and self._outgoing is not None
            out.append(Send(self._outgoing, self))
            interval = self._next_interval(trigger, self._intervals[trigger])
            self._intervals[trigger] = interval
            self._deadlines[trigger] = now + interval
        if Do.SEND_ACK in do:
            assert isinstance(message, Response)
            if self._ack is None:
                self._ack = make_ack(self.request, message)
            out.append(Send(self._ack, self))
        if Do.TRYING in do:
            self._outgoing = make_response(self.request, 100)
            out.append(Send(self._outgoing, self))
        if Do.TIMEOUT in do:
            assert isinstance(trigger, Timer)
            out.append(Timeout(self, trigger))
        if Do.REPORT in do:
            out.append(TransportError(self))
        return out

    def _enter(self, previous: frozenset[Timer], now: float) -> list[Action]:
        """Set the timers of the state just entered; a zero-duration timer fires at once."""
        running = self.machine.timers[self._state]
        for timer in [t for t in self._deadlines if t not in running]:
            del self._deadlines[timer]
        immediate: list[Timer] = []
        for timer in _in_order(running):  # definition order keeps the output deterministic
            if timer in previous:
                continue
            duration = self._duration(timer)
            if duration is None:
                continue
            if duration <= 0:
                immediate.append(timer)
            else:
                self._deadlines[timer] = now + duration
                self._intervals[timer] = duration
        if self._state in self.machine.lingering:
            # Kept this long, the parsed values would survive into the garbage collector's
            # older generations, to be walked again and again: parsed anew if ever asked for.
            for message in (self.request, self._outgoing, self._ack):
                if message is not None:
                    message.forget_parsed()
            # only the intervals of timers still running (G in Completed), else a fresh
            # dict: an empty one the collector does not track
            self._intervals = {t: i for t, i in self._intervals.items() if t in running}
        out: list[Action] = []
        if self.terminated:
            out.append(Terminated(self.key, self))
        for timer in immediate:
            if not self.terminated:
                out += self._handle(timer, now)
        return out

    def _duration(self, timer: Timer) -> float | None:
        return self.config.duration(timer, self.reliable)

    def _next_interval(self, timer: Timer, interval: float) -> float:
        return self.config.next_interval(timer, interval)


class ClientTransaction(Transaction[S]):
    """Sends a request reliably and hands its responses up (section 17.1)."""

    __slots__ = ()

    def __init__(
        self,
        machine: Machine[S],
        request: Request,
        *,
        reliable: bool,
        config: TimerConfig | None,
        peer: object,
    ) -> None:
        if not request.top_via.has_rfc3261_branch:
            raise TransactionError("a client transaction needs an RFC 3261 branch (new_branch)")
        super().__init__(
            machine, request, client_key(request), reliable=reliable, config=config, peer=peer
        )
        self._outgoing = request

    def start(self, now: float) -> list[Action]:
        """Send the request and start the timers."""
        return self._begin(Send(self.request, self), now)

    def receive_response(self, response: Response, now: float) -> list[Action]:
        if client_key(response) != self.key:
            raise TransactionError("response does not belong to this transaction")
        return self._handle(_RECV[_status_class(response.status)], now, response)


class ServerTransaction(Transaction[S]):
    """Hands a request up once and sends the TU's responses reliably (section 17.2)."""

    __slots__ = ()

    def __init__(
        self,
        machine: Machine[S],
        request: Request,
        *,
        reliable: bool,
        config: TimerConfig | None,
        peer: object,
    ) -> None:
        super().__init__(
            machine, request, server_key(request), reliable=reliable, config=config, peer=peer
        )

    @property
    def last_response(self) -> Response | None:
        """The response re-sent on request retransmissions (and whose To tag an RFC 2543
        ACK must carry)."""
        out = self._outgoing
        return out if isinstance(out, Response) else None

    def start(self, now: float) -> list[Action]:
        """Pass the request up to the TU and start the timers."""
        return self._begin(Deliver(self.request, self), now)

    def receive_request(self, request: Request, now: float) -> list[Action]:
        """A retransmission of the request, or (INVITE only) the ACK for a final response."""
        if request.method == "ACK" and self.request.method == "INVITE":
            return self._handle(Event.RECV_ACK, now, request)
        if request.method != self.request.method:
            raise TransactionError(f"{request.method} does not belong to this transaction")
        return self._handle(Event.RECV_REQUEST, now, request)

    def send_response(self, response: Response, now: float) -> list[Action]:
        """Send the TU's response (and keep it for retransmission)."""
        if response.cseq.method != self.request.method:
            raise TransactionError("response CSeq method does not match the request")
        return self._handle(_SEND[_status_class(response.status)], now, response)


def _require_method(request: Request, invite: bool) -> None:
    if request.method == "ACK":
        raise TransactionError("ACK creates no transaction (RFC 3261 section 17)")
    if (request.method == "INVITE") != invite:
        raise TransactionError(f"{request.method} needs the other transaction kind")


class InviteClientTransaction(ClientTransaction[InviteClientState]):
    """Section 17.1.1 with RFC 6026: ACKs non-2xx finals itself; 2xx go to the TU, which ACKs."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        config: TimerConfig | None = None,
        peer: object = None,
    ) -> None:
        _require_method(request, invite=True)
        super().__init__(INVITE_CLIENT, request, reliable=reliable, config=config, peer=peer)

    @property
    def ack(self) -> Request | None:
        """The ACK sent for the non-2xx final, once there is one."""
        return self._ack


class NonInviteClientTransaction(ClientTransaction[NonInviteClientState]):
    """Section 17.1.2."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        config: TimerConfig | None = None,
        peer: object = None,
    ) -> None:
        _require_method(request, invite=False)
        super().__init__(NON_INVITE_CLIENT, request, reliable=reliable, config=config, peer=peer)

    def _next_interval(self, timer: Timer, interval: float) -> float:
        # Section 17.1.2.2: once a provisional response came, Timer E is reset to T2.
        if self._state is NonInviteClientState.PROCEEDING:
            return self.config.T2
        return super()._next_interval(timer, interval)


class InviteServerTransaction(ServerTransaction[InviteServerState]):
    """Section 17.2.1 with RFC 6026. With auto_trying it sends 100 Trying when the TU has not
    answered within `TimerConfig.trying_delay` (200 ms), quenching INVITE retransmissions."""

    __slots__ = ("auto_trying",)

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        config: TimerConfig | None = None,
        peer: object = None,
        auto_trying: bool = True,
    ) -> None:
        _require_method(request, invite=True)
        self.auto_trying = auto_trying
        super().__init__(INVITE_SERVER, request, reliable=reliable, config=config, peer=peer)

    def _duration(self, timer: Timer) -> float | None:
        if timer is Timer.TRYING and not self.auto_trying:
            return None
        return super()._duration(timer)


class NonInviteServerTransaction(ServerTransaction[NonInviteServerState]):
    """Section 17.2.2."""

    __slots__ = ()

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool = False,
        config: TimerConfig | None = None,
        peer: object = None,
    ) -> None:
        _require_method(request, invite=False)
        super().__init__(NON_INVITE_SERVER, request, reliable=reliable, config=config, peer=peer)


ClientTx: TypeAlias = InviteClientTransaction | NonInviteClientTransaction
ServerTx: TypeAlias = InviteServerTransaction | NonInviteServerTransaction


# --- the layer ----------------------------------------------------------------------------


class TransactionLayer:
    """The transactions of one SIP element, keyed for matching, with one timer queue.

    Every method returns the actions to carry out, in order; terminated transactions leave the
    tables before the method returns (their `Terminated` action says so).
    """

    def __init__(
        self,
        config: TimerConfig | None = None,
        *,
        auto_trying: bool = True,
        retransmissions: Counter[str] | None = None,
    ) -> None:
        self.config = config if config is not None else DEFAULT_TIMERS
        self.auto_trying = auto_trying
        # What the timers re-send, by request method or final response status, when the
        # caller wants it counted (loadgen does).
        self.retransmissions = retransmissions
        self._clients: dict[TransactionKey, ClientTx] = {}
        self._servers: dict[TransactionKey, ServerTx] = {}
        # Lazy timer queue: an entry is live while it matches `_scheduled[tx]`.
        self._heap: list[tuple[float, int, Transaction[Any]]] = []
        self._scheduled: dict[Transaction[Any], float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    @property
    def clients(self) -> Mapping[TransactionKey, ClientTx]:
        return MappingProxyType(self._clients)

    @property
    def servers(self) -> Mapping[TransactionKey, ServerTx]:
        return MappingProxyType(self._servers)

    # -- client side -------------------------------------------------------------------------

    def send_request(
        self, request: Request, now: float, reliable: bool = False, *, peer: object = None
    ) -> tuple[ClientTx, list[Action]]:
        """Start a client transaction for `request` (its top Via needs a new_branch())."""
        tx: ClientTx
        if request.method == "INVITE":
            tx = InviteClientTransaction(request, reliable=reliable, config=self.config, peer=peer)
        else:
            tx = NonInviteClientTransaction(
                request, reliable=reliable, config=self.config, peer=peer
            )
        if tx.key in self._clients:
            raise TransactionError("a client transaction with this branch and method exists")
        self._clients[tx.key] = tx
        return tx, self._track(tx, tx.start(now))

    def find_client(self, response: Response) -> ClientTx | None:
        return self._clients.get(client_key(response))

    def receive_response(self, response: Response, now: float) -> list[Action]:
        tx = self.find_client(response)
        if tx is None:
            return [StrayResponse(response)]
        return self._track(tx, tx.receive_response(response, now))

    # -- server side -------------------------------------------------------------------------

    def find_server(self, request: Request) -> ServerTx | None:
        """The server transaction `request` belongs to (section 17.2.3), ACK rules included."""
        if request.method == "ACK":
            return self._match_ack(request)
        return self._servers.get(server_key(request))

    def find_cancel_target(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (section 9.2)."""
        tx = self._servers.get(cancel_target_key(cancel))
        return tx if isinstance(tx, InviteServerTransaction) else None

    def receive_request(
        self, request: Request, now: float, reliable: bool = False, *, peer: object = None
    ) -> list[Action]:
        """A request from the network: a retransmission is absorbed by its transaction, an
        ACK that matches none goes straight to the TU (it acknowledges a 2xx), anything else
        starts a server transaction whose first action delivers the request."""
        existing = self.find_server(request)
        if existing is not None:
            return self._track(existing, existing.receive_request(request, now))
        if request.method == "ACK":
            return [Deliver(request)]
        tx: ServerTx
        if request.method == "INVITE":
            tx = InviteServerTransaction(
                request,
                reliable=reliable,
                config=self.config,
                peer=peer,
                auto_trying=self.auto_trying,
            )
        else:
            tx = NonInviteServerTransaction(
                request, reliable=reliable, config=self.config, peer=peer
            )
        self._servers[tx.key] = tx
        return self._track(tx, tx.start(now))

    def send_response(
        self, transaction: ServerTransaction[Any] | TransactionKey, response: Response, now: float
    ) -> list[Action]:
        """The TU answers: pass the server transaction (`Deliver.transaction`) or its key."""
        # Two returns rather than one conditional expression, which crashes mypyc 2.4.
        if isinstance(transaction, TransactionKey):
            found = self._servers.get(transaction)
            if found is None:
                raise TransactionError("no such server transaction")
            return self._track(found, found.send_response(response, now))
        return self._track(transaction, transaction.send_response(response, now))

    # -- both --------------------------------------------------------------------------------

    def transport_error(self, transaction: Transaction[Any], now: float) -> list[Action]:
        """The transport failed to send a message of `transaction` (`Send.transaction`)."""
        return self._track(transaction, transaction.transport_error(now))

    def next_timer(self) -> float | None:
        """The earliest deadline over all transactions: call `handle_timer` then."""
        heap = self._heap
        while heap and self._scheduled.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale: that transaction was rescheduled or ended
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[Action]:
        """Fire every timer due at `now`, transaction by transaction, earliest first."""
        out: list[Action] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, tx = heapq.heappop(heap)
            if self._scheduled.get(tx) != when:
                continue
            del self._scheduled[tx]
            out += self._track(tx, tx.handle_timer(now))
        if self.retransmissions is not None:
            for action in out:
                if not isinstance(action, Send):
                    continue
                message = action.message
                if isinstance(message, Request):
                    self.retransmissions[message.method] += 1
                elif message.status >= 200:
                    self.retransmissions[str(message.status)] += 1
        return out

    # -- internals ---------------------------------------------------------------------------

    def _match_ack(self, ack: Request) -> InviteServerTransaction | None:
        if ack.top_via.has_rfc3261_branch:
            tx = self._servers.get(server_key(ack))
            return tx if isinstance(tx, InviteServerTransaction) else None
        # RFC 2543: the INVITE's fields, and the ACK's To tag is that of our response. The
        # INVITE had no To tag (initial) or the same one (re-INVITE).
        to_tag = ack.to.tag
        for invite_tag in dict.fromkeys((None, to_tag)):
            tx = self._servers.get(_rfc2543_key(ack, "INVITE", invite_tag))
            if not isinstance(tx, InviteServerTransaction):
                continue
            sent = tx.last_response
            if sent is not None and sent.to.tag == to_tag:
                return tx
        return None

    def _track(self, tx: Transaction[Any], actions: list[Action]) -> list[Action]:
        """Drop a terminated transaction from its table, or requeue its next deadline."""
        if tx.terminated:
            table: dict[TransactionKey, Any] = (
                self._clients if isinstance(tx, ClientTransaction) else self._servers
            )
            if table.get(tx.key) is tx:
                del table[tx.key]
            self._scheduled.pop(tx, None)
            return actions
        when = tx.next_timer()
        if when is None:
            self._scheduled.pop(tx, None)
        elif self._scheduled.get(tx) != when:
            self._scheduled[tx] = when
            heapq.heappush(self._heap, (when, next(self._seq), tx))
        return actions
