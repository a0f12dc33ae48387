"""The SIP transaction layer (RFC 3261 section 17, RFC 6026), driven by a fake clock.

Time is just the numbers passed in: `run()` plays the role of the event loop, calling
`handle_timer(t)` at every deadline that `next_timer()` announces, and records what came out.
"""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from enum import Enum
from typing import Any

import pytest

from services.sip.headers import CSeq
from services.sip.message import Request, Response, make_response, parse_message
from services.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Action,
    Deliver,
    Event,
    InviteClientState,
    InviteClientTransaction,
    InviteServerState,
    InviteServerTransaction,
    Machine,
    NonInviteClientState,
    NonInviteClientTransaction,
    NonInviteServerState,
    NonInviteServerTransaction,
    Send,
    StrayResponse,
    Terminated,
    Timeout,
    Timer,
    TimerConfig,
    Transaction,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransportError,
    cancel_target_key,
    client_key,
    new_branch,
    server_key,
)

BRANCH = "z9hG4bK776asdhds"
UDP_INVITE_SENDS = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # timer A, T1 = 0.5
E_SENDS = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]  # timer E/G capped at T2

# --- messages ------------------------------------------------------------------------------


def parse(text: str) -> Request | Response:
    """SIP text written with plain newlines: CRLF line ends and Content-Length filled in."""
    head, _, body = textwrap.dedent(text).strip("\n").partition("\n\n")
    wire_body = body.replace("\n", "\r\n")
    head = head.replace("\n", "\r\n") + f"\r\nContent-Length: {len(wire_body.encode())}"
    return parse_message((head + "\r\n\r\n" + wire_body).encode())


def as_request(text: str) -> Request:
    msg = parse(text)
    assert isinstance(msg, Request)
    return msg


def via(branch: str | None, host: str = "pc33.atlanta.com", transport: str = "UDP") -> str:
    param = "" if branch is None else f";branch={branch}"
    return f"Via: SIP/2.0/{transport} {host}{param}"


def invite(
    branch: str | None = BRANCH,
    *,
    host: str = "pc33.atlanta.com",
    to: str = "Bob <sip:bob@biloxi.com>",
    cseq: int = 314159,
    call_id: str = "a84b4c76e66710@pc33.atlanta.com",
    below: str = "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKlower;received=192.0.2.7",
) -> Request:
    """Alice's INVITE as forwarded by a proxy: two Vias, a route set, an SDP offer."""
    return as_request(
        f"""
        INVITE sip:bob@biloxi.com SIP/2.0
        {via(branch, host)}
        {below}
        Max-Forwards: 69
        Route: <sip:pcscf.ims.example.net;lr>
        Route: <sip:scscf.ims.example.net;lr>
        To: {to}
        From: Alice <sip:alice@atlanta.com>;tag=1928301774
        Call-ID: {call_id}
        CSeq: {cseq} INVITE
        Contact: <sip:alice@pc33.atlanta.com>
        Content-Type: application/sdp

        v=0
        o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com
        s=-
        c=IN IP4 192.0.2.101
        t=0 0
        m=audio 49172 RTP/AVP 0
        """
    )


def register(
    branch: str | None = "z9hG4bKnashds7", *, call_id: str = "reg-1@192.0.2.10"
) -> Request:
    return as_request(
        f"""
        REGISTER sip:ims.example.net SIP/2.0
        {via(branch, "192.0.2.10:5060")}
        Max-Forwards: 70
        To: <sip:+15551234567@ims.example.net>
        From: <sip:+15551234567@ims.example.net>;tag=4fa3
        Call-ID: {call_id}
        CSeq: 2 REGISTER
        Contact: <sip:+15551234567@192.0.2.10:5060>
        Expires: 600

        """
    )


def cancel_for(inv: Request, *, branch_via: str | None = None, cseq: int | None = None) -> Request:
    """The CANCEL a UAC sends for `inv` (section 9.1): same Request-URI, Call-ID, From, To,
    CSeq number and top Via."""
    h = inv.headers
    return as_request(
        f"""
        CANCEL {inv.uri_text} SIP/2.0
        Via: {branch_via or h.first_value("via")}
        Max-Forwards: 70
        To: {h.get("to")}
        From: {h.get("from")}
        Call-ID: {inv.call_id}
        CSeq: {inv.cseq.seq if cseq is None else cseq} CANCEL

        """
    )


def ack_text(inv: Request, to: str, top_via: str | None = None) -> Request:
    """An ACK as a UAC writes it, for the server-side tests (independent of make_ack)."""
    h = inv.headers
    return as_request(
        f"""
        ACK {inv.uri_text} SIP/2.0
        Via: {top_via or h.first_value("via")}
        Max-Forwards: 70
        To: {to}
        From: {h.get("from")}
        Call-ID: {inv.call_id}
        CSeq: {inv.cseq.seq} ACK

        """
    )


def reply(request: Request, status: int, tag: str | None = "a6c85cf") -> Response:
    """The response as it arrives from the network (built, serialized, parsed again)."""
    msg = parse_message(make_response(request, status, to_tag=tag).to_bytes())
    assert isinstance(msg, Response)
    return msg


# --- the fake clock ------------------------------------------------------------------------


def run(obj: Any, until: float) -> list[tuple[float, Action]]:
    """Fire every timer up to `until`, exactly at its deadline; (time, action) pairs."""
    out: list[tuple[float, Action]] = []
    while (when := obj.next_timer()) is not None and when <= until:
        out += [(when, action) for action in obj.handle_timer(when)]
    return out


def send_times(events: list[tuple[float, Action]]) -> list[float]:
    return [t for t, a in events if isinstance(a, Send)]


def others(events: list[tuple[float, Action]]) -> list[tuple[float, type]]:
    return [(t, type(a)) for t, a in events if not isinstance(a, Send)]


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions]


def delivered_to(actions: list[Action]) -> Transaction[Any]:
    """The transaction of the one Deliver in `actions` (a new server transaction)."""
    (action,) = actions
    assert isinstance(action, Deliver) and action.transaction is not None
    return action.transaction


def state_of(tx: Transaction[Any]) -> Enum:
    """Read the state through a call, so mypy keeps no narrowing from an earlier assert."""
    state: Enum = tx.state
    return state


def started_ict(
    reliable: bool = False, config: TimerConfig | None = None
) -> InviteClientTransaction:
    tx = InviteClientTransaction(invite(), reliable=reliable, config=config)
    tx.start(0.0)
    return tx


def started_ist(reliable: bool = False, auto_trying: bool = False) -> InviteServerTransaction:
    tx = InviteServerTransaction(invite(), reliable=reliable, auto_trying=auto_trying)
    tx.start(0.0)
    return tx


# --- timer configuration -------------------------------------------------------------------


def test_timer_config_defaults_follow_rfc3261_table_4() -> None:
    c = TimerConfig()
    assert (c.T1, c.T2, c.T4) == (0.5, 4.0, 5.0)
    for timer in (Timer.B, Timer.F, Timer.H, Timer.L, Timer.M):
        assert c.duration(timer, reliable=False) == c.duration(timer, reliable=True) == 32.0
    assert (c.duration(Timer.J, False), c.duration(Timer.J, True)) == (32.0, 0.0)
    assert (c.duration(Timer.D, False), c.duration(Timer.D, True)) == (32.0, 0.0)
    for timer in (Timer.I, Timer.K):
        assert (c.duration(timer, False), c.duration(timer, True)) == (5.0, 0.0)
    for timer in (Timer.A, Timer.E, Timer.G):
        assert (c.duration(timer, False), c.duration(timer, True)) == (0.5, None)
    assert c.duration(Timer.TRYING, False) == 0.2
    assert c.next_interval(Timer.A, 8.0) == 16.0  # A is not capped
    assert c.next_interval(Timer.E, 4.0) == 4.0
    assert c.next_interval(Timer.G, 1.0) == 2.0


def test_timer_config_is_configurable_and_validated() -> None:
    c = TimerConfig(T1=0.25, T2=1.0, T4=3.0)
    assert c.duration(Timer.B, False) == 16.0
    assert c.duration(Timer.K, False) == 3.0
    assert c.next_interval(Timer.G, 1.0) == 1.0
    with pytest.raises(ValueError):
        TimerConfig(T1=0)
    with pytest.raises(ValueError):
        TimerConfig(T1=5.0, T2=4.0)
    with pytest.raises(ValueError):
        TimerConfig(T4=-1)


def test_state_tables_are_consistent() -> None:
    """Every state has a row; timers fire only where they run; transport errors are handled
    in every live state; Terminated accepts nothing."""
    machines: list[Machine[Any]] = [
        INVITE_CLIENT,
        NON_INVITE_CLIENT,
        INVITE_SERVER,
        NON_INVITE_SERVER,
    ]
    for machine in machines:
        state_enum: type[Enum] = type(machine.initial)
        states = set(state_enum)
        assert set(machine.transitions) == states == set(machine.timers)
        assert machine.transitions[machine.terminated] == {}
        for state, row in machine.transitions.items():
            for trigger, (target, _) in row.items():
                assert target in states
                if isinstance(trigger, Timer):
                    assert trigger in machine.timers[state], (machine.name, state, trigger)
            for timer in machine.timers[state]:
                assert timer in row, (machine.name, state, timer)
            if state is not machine.terminated:
                assert Event.TRANSPORT_ERROR in row


# --- INVITE client -------------------------------------------------------------------------


def test_invite_client_udp_retransmits_on_timer_a_until_timer_b() -> None:
    tx = InviteClientTransaction(invite())
    assert tx.start(0.0) == [Send(tx.request, tx)]
    assert tx.state is InviteClientState.CALLING
    events = run(tx, 100.0)
    assert send_times(events) == UDP_INVITE_SENDS
    assert all(a.message is tx.request for _, a in events if isinstance(a, Send))
    assert others(events) == [(32.0, Timeout), (32.0, Terminated)]
    timeout = events[-2][1]
    assert isinstance(timeout, Timeout) and timeout.timer is Timer.B and timeout.transaction is tx
    assert state_of(tx) is InviteClientState.TERMINATED
    assert tx.next_timer() is None


def test_invite_client_reliable_sends_once_and_times_out_at_b() -> None:
    tx = started_ict(reliable=True)
    assert tx.deadline(Timer.A) is None
    events = run(tx, 100.0)
    assert others(events) == [(32.0, Timeout), (32.0, Terminated)]
    assert send_times(events) == []


def test_invite_client_provisional_stops_retransmissions_and_timer_b() -> None:
    tx = started_ict()
    run(tx, 0.5)
    ringing = reply(tx.request, 180)
    assert tx.receive_response(ringing, 0.7) == [Deliver(ringing, tx)]
    assert tx.state is InviteClientState.PROCEEDING
    assert tx.next_timer() is None  # no A, no B: an INVITE may ring for minutes
    progress = reply(tx.request, 183)
    assert tx.receive_response(progress, 5.0) == [Deliver(progress, tx)]
    assert tx.state is InviteClientState.PROCEEDING


def test_invite_client_non2xx_is_acked_and_delivered() -> None:
    tx = started_ict()
    busy = reply(tx.request, 486)
    actions = tx.receive_response(busy, 1.0)
    assert tx.state is InviteClientState.COMPLETED
    assert tx.ack is not None
    assert actions == [Deliver(busy, tx), Send(tx.ack, tx)]
    assert tx.deadline(Timer.D) == 33.0
    assert (tx.deadline(Timer.A), tx.deadline(Timer.B)) == (None, None)


def test_invite_client_ack_for_non2xx_fields() -> None:
    """Section 17.1.1.3, field by field."""
    tx = started_ict()
    inv = tx.request
    busy = reply(inv, 486, tag="a6c85cf")
    tx.receive_response(busy, 1.0)
    ack = tx.ack
    assert ack is not None
    assert ack.method == "ACK"
    assert ack.uri_text == inv.uri_text == "sip:bob@biloxi.com"
    assert ack.call_id == inv.call_id
    assert ack.headers.get("from") == inv.headers.get("from")
    assert ack.from_.tag == "1928301774"
    assert ack.headers.get("to") == busy.headers.get("to") == "Bob <sip:bob@biloxi.com>;tag=a6c85cf"
    assert ack.to.tag == "a6c85cf"
    assert ack.cseq == CSeq(314159, "ACK")
    assert ack.headers.get_all("via") == [f"SIP/2.0/UDP pc33.atlanta.com;branch={BRANCH}"]
    assert len(inv.vias) == 2 and len(ack.vias) == 1
    assert ack.headers.get_all("route") == [
        "<sip:pcscf.ims.example.net;lr>",
        "<sip:scscf.ims.example.net;lr>",
    ]
    assert ack.max_forwards == 70
    assert ack.headers.get("content-length") == "0" and ack.body == b""
    assert "contact" not in ack.headers and "content-type" not in ack.headers
    wire = parse_message(ack.to_bytes(), strict=True)
    assert isinstance(wire, Request) and wire.method == "ACK"


def test_invite_client_ack_takes_the_top_via_of_a_combined_via_line() -> None:
    template = invite()
    template.headers.set(
        "Via",
        f"SIP/2.0/UDP pc33.atlanta.com;branch={BRANCH}, SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKx",
    )
    inv = parse_message(template.to_bytes())
    assert isinstance(inv, Request) and len(inv.vias) == 2
    tx = InviteClientTransaction(inv)
    tx.start(0.0)
    tx.receive_response(reply(inv, 404), 1.0)
    assert tx.ack is not None
    assert tx.ack.headers.get_all("via") == [f"SIP/2.0/UDP pc33.atlanta.com;branch={BRANCH}"]


def test_invite_client_completed_absorbs_final_retransmissions() -> None:
    tx = started_ict()
    tx.receive_response(reply(tx.request, 180), 0.2)
    tx.receive_response(reply(tx.request, 486), 1.0)  # from Proceeding
    ack = tx.ack
    assert tx.state is InviteClientState.COMPLETED
    assert ack is not None
    again = tx.receive_response(reply(tx.request, 486), 2.0)
    assert again == [Send(ack, tx)]
    assert isinstance(again[0], Send) and again[0].message is ack  # the same ACK, re-sent
    assert tx.receive_response(reply(tx.request, 180), 2.5) == []
    assert tx.receive_response(reply(tx.request, 200), 2.6) == []
    assert run(tx, 100.0) == [(33.0, Terminated(tx.key, tx))]


def test_invite_client_reliable_timer_d_is_zero() -> None:
    tx = started_ict(reliable=True)
    busy = reply(tx.request, 603)
    actions = tx.receive_response(busy, 1.0)
    assert tx.ack is not None
    assert actions == [Deliver(busy, tx), Send(tx.ack, tx), Terminated(tx.key, tx)]
    assert tx.state is InviteClientState.TERMINATED


def test_invite_client_2xx_goes_accepted_and_every_2xx_reaches_the_tu() -> None:
    """RFC 6026: the transaction stays for Timer M and passes up 2xx retransmissions and
    forked 2xx; it never ACKs a 2xx itself."""
    tx = started_ict()
    tx.receive_response(reply(tx.request, 180), 0.2)
    ok = reply(tx.request, 200)
    assert tx.receive_response(ok, 1.0) == [Deliver(ok, tx)]
    assert tx.state is InviteClientState.ACCEPTED
    assert tx.ack is None
    assert tx.deadline(Timer.M) == 33.0
    ok_again = reply(tx.request, 200)
    assert tx.receive_response(ok_again, 2.0) == [Deliver(ok_again, tx)]
    forked = reply(tx.request, 200, tag="fork2")
    assert tx.receive_response(forked, 2.5) == [Deliver(forked, tx)]
    assert tx.receive_response(reply(tx.request, 180), 3.0) == []
    assert tx.receive_response(reply(tx.request, 486), 3.0) == []
    assert tx.state is InviteClientState.ACCEPTED
    assert run(tx, 100.0) == [(33.0, Terminated(tx.key, tx))]


def test_invite_client_2xx_in_calling_cancels_timers_a_and_b() -> None:
    tx = started_ict()
    tx.receive_response(reply(tx.request, 200), 0.2)
    assert tx.state is InviteClientState.ACCEPTED
    assert tx.next_timer() == 32.2  # only M
    assert send_times(run(tx, 100.0)) == []


def test_invite_client_transport_errors() -> None:
    calling = started_ict()
    assert calling.transport_error(0.1) == [
        TransportError(calling),
        Terminated(calling.key, calling),
    ]
    assert calling.next_timer() is None
    completed = started_ict()
    completed.receive_response(reply(completed.request, 500), 1.0)
    assert kinds(completed.transport_error(1.1)) == [TransportError, Terminated]
    accepted = started_ict()
    accepted.receive_response(reply(accepted.request, 200), 1.0)
    assert accepted.transport_error(1.1) == [TransportError(accepted)]
    assert accepted.state is InviteClientState.ACCEPTED


def test_invite_client_misuse_raises() -> None:
    tx = started_ict()
    with pytest.raises(TransactionError):
        tx.start(0.0)
    with pytest.raises(TransactionError):  # not our branch
        tx.receive_response(reply(invite("z9hG4bKother"), 200), 1.0)
    with pytest.raises(TransactionError):  # ACK is never a client transaction
        InviteClientTransaction(ack_text(invite(), "Bob <sip:bob@biloxi.com>;tag=x"))
    with pytest.raises(TransactionError):
        NonInviteClientTransaction(invite())
    with pytest.raises(TransactionError):  # RFC 2543 branch: we must use new_branch()
        InviteClientTransaction(invite(None))
    with pytest.raises(TransactionError):
        InviteClientTransaction(invite()).receive_response(reply(invite(), 180), 0.0)
    tx.transport_error(1.0)
    with pytest.raises(TransactionError):
        tx.receive_response(reply(tx.request, 200), 2.0)


# --- non-INVITE client ---------------------------------------------------------------------


def test_non_invite_client_timer_e_doubles_up_to_t2_then_f() -> None:
    tx = NonInviteClientTransaction(register())
    assert tx.start(0.0) == [Send(tx.request, tx)]
    assert tx.state is NonInviteClientState.TRYING
    events = run(tx, 100.0)
    assert send_times(events) == E_SENDS
    assert others(events) == [(32.0, Timeout), (32.0, Terminated)]
    timeout = events[-2][1]
    assert isinstance(timeout, Timeout) and timeout.timer is Timer.F


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    tx = NonInviteClientTransaction(register())
    tx.start(0.0)
    run(tx, 0.5)
    trying = reply(tx.request, 100, tag=None)
    assert tx.receive_response(trying, 1.0) == [Deliver(trying, tx)]
    assert tx.state is NonInviteClientState.PROCEEDING
    assert tx.deadline(Timer.E) == 1.5  # the pending retransmission keeps its time
    events = run(tx, 100.0)
    assert send_times(events) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert others(events) == [(32.0, Timeout), (32.0, Terminated)]


def test_non_invite_client_final_completes_and_timer_k() -> None:
    tx = NonInviteClientTransaction(register())
    tx.start(0.0)
    ok = reply(tx.request, 200)
    assert tx.receive_response(ok, 2.0) == [Deliver(ok, tx)]
    assert tx.state is NonInviteClientState.COMPLETED
    assert (tx.deadline(Timer.E), tx.deadline(Timer.F), tx.deadline(Timer.K)) == (None, None, 7.0)
    assert tx.receive_response(reply(tx.request, 200), 3.0) == []
    assert tx.receive_response(reply(tx.request, 100, tag=None), 3.0) == []
    assert run(tx, 100.0) == [(7.0, Terminated(tx.key, tx))]


def test_non_invite_client_proceeding_to_completed_on_failure() -> None:
    tx = NonInviteClientTransaction(register())
    tx.start(0.0)
    tx.receive_response(reply(tx.request, 100, tag=None), 0.1)
    unauthorized = reply(tx.request, 401)
    assert tx.receive_response(unauthorized, 0.2) == [Deliver(unauthorized, tx)]
    assert tx.state is NonInviteClientState.COMPLETED


def test_non_invite_client_reliable_no_e_and_zero_k() -> None:
    tx = NonInviteClientTransaction(register(), reliable=True)
    tx.start(0.0)
    assert tx.deadline(Timer.E) is None
    assert tx.next_timer() == 32.0  # F still guards the transaction
    ok = reply(tx.request, 200)
    assert tx.receive_response(ok, 1.0) == [Deliver(ok, tx), Terminated(tx.key, tx)]


def test_non_invite_client_transport_errors() -> None:
    trying = NonInviteClientTransaction(register())
    trying.start(0.0)
    assert kinds(trying.transport_error(0.1)) == [TransportError, Terminated]
    proceeding = NonInviteClientTransaction(register())
    proceeding.start(0.0)
    proceeding.receive_response(reply(proceeding.request, 100, tag=None), 0.1)
    assert kinds(proceeding.transport_error(0.2)) == [TransportError, Terminated]
    completed = NonInviteClientTransaction(register())
    completed.start(0.0)
    completed.receive_response(reply(completed.request, 200), 0.1)
    assert kinds(completed.transport_error(0.2)) == [TransportError]
    assert completed.state is NonInviteClientState.COMPLETED


def test_custom_t1_t2_t4_change_every_schedule() -> None:
    config = TimerConfig(T1=0.25, T2=1.0, T4=3.0)
    nict = NonInviteClientTransaction(register(), config=config)
    nict.start(0.0)
    events = run(nict, 100.0)
    assert send_times(events)[:6] == [0.25, 0.75, 1.75, 2.75, 3.75, 4.75]
    assert others(events) == [(16.0, Timeout), (16.0, Terminated)]
    ict = started_ict(config=config)
    events = run(ict, 100.0)
    assert send_times(events) == [0.25, 0.75, 1.75, 3.75, 7.75, 15.75]
    assert others(events)[0] == (16.0, Timeout)
    done = NonInviteClientTransaction(register(), config=config)
    done.start(0.0)
    done.receive_response(reply(done.request, 200), 1.0)
    assert done.deadline(Timer.K) == 4.0  # T4


# --- INVITE server -------------------------------------------------------------------------


def test_invite_server_sends_100_trying_after_200ms() -> None:
    inv = invite()
    tx = InviteServerTransaction(inv)  # auto_trying defaults to on
    assert tx.start(0.0) == [Deliver(inv, tx)]
    assert tx.state is InviteServerState.PROCEEDING
    assert tx.next_timer() == 0.2
    assert tx.handle_timer(0.19) == []
    actions = tx.handle_timer(0.2)
    assert len(actions) == 1 and isinstance(actions[0], Send)
    trying = actions[0].message
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to.tag is None  # section 17.2.1: no To tag on the 100
    assert trying.headers.get_all("via") == inv.headers.get_all("via")
    assert trying.cseq == inv.cseq and trying.call_id == inv.call_id
    assert tx.last_response is trying
    assert tx.receive_request(invite(), 0.5) == [Send(trying, tx)]  # quench the retransmission
    assert tx.next_timer() is None


def test_invite_server_no_100_when_the_tu_answers_within_200ms() -> None:
    tx = InviteServerTransaction(invite())
    tx.start(0.0)
    ringing = make_response(tx.request, 180, to_tag="b1")
    assert tx.send_response(ringing, 0.1) == [Send(ringing, tx)]
    assert tx.next_timer() is None
    assert tx.handle_timer(0.2) == []


def test_invite_server_auto_trying_off_absorbs_early_retransmission() -> None:
    tx = started_ist(auto_trying=False)
    assert tx.next_timer() is None
    assert tx.receive_request(invite(), 0.5) == []  # nothing to resend, not delivered again


def test_invite_server_provisional_resent_on_retransmission() -> None:
    tx = started_ist()
    ringing = make_response(tx.request, 180, to_tag="b1")
    progress = make_response(tx.request, 183, to_tag="b1")
    tx.send_response(ringing, 0.1)
    tx.send_response(progress, 0.2)
    assert tx.receive_request(invite(), 0.5) == [Send(progress, tx)]
    assert tx.state is InviteServerState.PROCEEDING


def test_invite_server_non2xx_timer_g_and_h() -> None:
    tx = started_ist()
    busy = make_response(tx.request, 486, to_tag="b1")
    assert tx.send_response(busy, 0.0) == [Send(busy, tx)]
    assert tx.state is InviteServerState.COMPLETED
    events = run(tx, 100.0)
    assert send_times(events) == E_SENDS
    assert all(a.message is busy for _, a in events if isinstance(a, Send))
    assert others(events) == [(32.0, Timeout), (32.0, Terminated)]
    timeout = events[-2][1]
    assert isinstance(timeout, Timeout) and timeout.timer is Timer.H


def test_invite_server_completed_resends_final_on_retransmitted_invite() -> None:
    tx = started_ist()
    busy = make_response(tx.request, 486, to_tag="b1")
    tx.send_response(busy, 0.0)
    assert tx.receive_request(invite(), 0.3) == [Send(busy, tx)]


def test_invite_server_ack_confirms_and_timer_i() -> None:
    tx = started_ist()
    busy = make_response(tx.request, 486, to_tag="b1")
    tx.send_response(busy, 0.0)
    ack = ack_text(tx.request, "Bob <sip:bob@biloxi.com>;tag=b1")
    assert tx.receive_request(ack, 1.0) == []  # the ACK of a non-2xx is not the TU's business
    assert tx.state is InviteServerState.CONFIRMED
    assert (tx.deadline(Timer.G), tx.deadline(Timer.H), tx.deadline(Timer.I)) == (None, None, 6.0)
    assert tx.receive_request(ack, 2.0) == []
    assert tx.receive_request(invite(), 2.0) == []
    assert run(tx, 100.0) == [(6.0, Terminated(tx.key, tx))]


def test_invite_server_reliable_no_g_zero_i() -> None:
    tx = started_ist(reliable=True)
    tx.send_response(make_response(tx.request, 404, to_tag="b1"), 0.0)
    assert tx.deadline(Timer.G) is None
    assert tx.deadline(Timer.H) == 32.0
    ack = ack_text(tx.request, "Bob <sip:bob@biloxi.com>;tag=b1")
    assert tx.receive_request(ack, 0.5) == [Terminated(tx.key, tx)]


def test_invite_server_2xx_goes_accepted_rfc6026() -> None:
    tx = started_ist()
    ok = make_response(tx.request, 200, to_tag="b1")
    assert tx.send_response(ok, 1.0) == [Send(ok, tx)]
    assert tx.state is InviteServerState.ACCEPTED
    assert tx.deadline(Timer.L) == 33.0
    assert tx.receive_request(invite(), 1.5) == []  # absorbed, not resent, not delivered
    ack = ack_text(tx.request, "Bob <sip:bob@biloxi.com>;tag=b1")
    assert tx.receive_request(ack, 1.6) == [Deliver(ack, tx)]
    assert tx.send_response(ok, 2.0) == [Send(ok, tx)]  # the TU retransmits its 2xx
    assert tx.state is InviteServerState.ACCEPTED
    assert run(tx, 100.0) == [(33.0, Terminated(tx.key, tx))]


def test_invite_server_illegal_tu_events_raise() -> None:
    tx = started_ist()
    with pytest.raises(TransactionError):  # a response to another method
        tx.send_response(make_response(register(), 200), 0.0)
    tx.send_response(make_response(tx.request, 486, to_tag="b1"), 0.0)
    with pytest.raises(TransactionError):
        tx.send_response(make_response(tx.request, 180, to_tag="b1"), 0.1)
    with pytest.raises(TransactionError):
        tx.send_response(make_response(tx.request, 200, to_tag="b1"), 0.1)
    accepted = started_ist()
    accepted.send_response(make_response(accepted.request, 200, to_tag="b1"), 0.0)
    with pytest.raises(TransactionError):
        accepted.send_response(make_response(accepted.request, 486, to_tag="b1"), 0.1)
    run(accepted, 100.0)
    with pytest.raises(TransactionError):
        accepted.receive_request(invite(), 101.0)
    with pytest.raises(TransactionError):
        InviteServerTransaction(register())


def test_invite_server_transport_error_keeps_the_state() -> None:
    """RFC 6026 section 8.7: the INVITE server transaction stays, so retransmissions are
    still absorbed; its timers end it."""
    tx = started_ist()
    assert tx.transport_error(0.1) == [TransportError(tx)]
    assert tx.state is InviteServerState.PROCEEDING
    tx.send_response(make_response(tx.request, 486, to_tag="b1"), 0.2)
    assert tx.transport_error(0.3) == [TransportError(tx)]
    assert state_of(tx) is InviteServerState.COMPLETED
    assert tx.deadline(Timer.H) == 32.2


def test_invite_server_ack_before_final_is_dropped() -> None:
    tx = started_ist()
    ack = ack_text(tx.request, "Bob <sip:bob@biloxi.com>;tag=b1")
    assert tx.receive_request(ack, 0.1) == []
    assert tx.state is InviteServerState.PROCEEDING


# --- non-INVITE server ---------------------------------------------------------------------


def test_non_invite_server_trying_absorbs_retransmissions() -> None:
    req = register()
    tx = NonInviteServerTransaction(req)
    assert tx.start(0.0) == [Deliver(req, tx)]
    assert tx.state is NonInviteServerState.TRYING
    assert tx.receive_request(register(), 0.5) == []  # not delivered twice
    assert tx.next_timer() is None


def test_non_invite_server_proceeding_resends_provisional() -> None:
    tx = NonInviteServerTransaction(register())
    tx.start(0.0)
    trying = make_response(tx.request, 100)
    assert tx.send_response(trying, 0.1) == [Send(trying, tx)]
    assert tx.state is NonInviteServerState.PROCEEDING
    assert tx.receive_request(register(), 0.5) == [Send(trying, tx)]


def test_non_invite_server_completed_resends_final_and_timer_j() -> None:
    tx = NonInviteServerTransaction(register())
    tx.start(0.0)
    tx.send_response(make_response(tx.request, 100), 0.1)
    ok = make_response(tx.request, 200, to_tag="r1")
    assert tx.send_response(ok, 1.0) == [Send(ok, tx)]
    assert tx.state is NonInviteServerState.COMPLETED
    assert tx.deadline(Timer.J) == 33.0
    assert tx.receive_request(register(), 2.0) == [Send(ok, tx)]
    assert tx.send_response(make_response(tx.request, 500), 2.5) == []  # discarded (17.2.2)
    assert tx.last_response is ok
    with pytest.raises(TransactionError):
        tx.send_response(make_response(tx.request, 180), 2.6)
    assert run(tx, 100.0) == [(33.0, Terminated(tx.key, tx))]


def test_lingering_transactions_drop_what_was_parsed_and_still_work() -> None:
    """A transaction that only absorbs retransmissions (up to 32 s) lets go of the values
    parsed out of its messages; they are parsed again, equal, when asked for, and what it
    resends is unchanged."""
    tx = NonInviteServerTransaction(register())
    tx.start(0.0)
    ok = make_response(tx.request, 200, to_tag="r1")
    parsed_via, parsed_cseq = tx.request.top_via, ok.cseq
    wire = bytes(ok)
    tx.send_response(ok, 1.0)
    assert tx.state is NonInviteServerState.COMPLETED
    assert tx.request.top_via is not parsed_via and tx.request.top_via == parsed_via
    assert ok.cseq is not parsed_cseq and ok.cseq == parsed_cseq
    assert tx.receive_request(register(), 2.0) == [Send(ok, tx)]
    assert bytes(ok) == wire and ok.to.tag == "r1"


def test_non_invite_server_reliable_timer_j_is_zero() -> None:
    tx = NonInviteServerTransaction(register(), reliable=True)
    tx.start(0.0)
    ok = make_response(tx.request, 200, to_tag="r1")
    assert tx.send_response(ok, 0.1) == [Send(ok, tx), Terminated(tx.key, tx)]


def test_non_invite_server_transport_error_terminates() -> None:
    tx = NonInviteServerTransaction(register())
    tx.start(0.0)
    tx.send_response(make_response(tx.request, 200, to_tag="r1"), 0.1)
    assert kinds(tx.transport_error(0.2)) == [TransportError, Terminated]
    assert tx.next_timer() is None


# --- matching keys -------------------------------------------------------------------------


def test_client_key_is_branch_and_cseq_method() -> None:
    inv = invite()
    assert client_key(inv) == TransactionKey("INVITE", BRANCH)
    assert client_key(reply(inv, 180)) == client_key(inv)
    cancel_response = reply(cancel_for(inv), 200)
    assert client_key(cancel_response) == TransactionKey("CANCEL", BRANCH)


def test_server_key_rfc3261_branch_sent_by_method() -> None:
    inv = invite()
    key = server_key(inv)
    assert key == TransactionKey("INVITE", BRANCH, "pc33.atlanta.com")
    assert key.rfc2543 is None
    ack = ack_text(inv, "Bob <sip:bob@biloxi.com>;tag=b1")
    assert server_key(ack) == key  # ACK is matched as INVITE
    assert server_key(cancel_for(inv)).method == "CANCEL"
    assert server_key(invite(host="PC33.Atlanta.COM")) == key  # host is case-insensitive
    assert server_key(invite(host="pc34.atlanta.com")) != key  # same branch, other sender
    assert server_key(invite(host="pc33.atlanta.com:5070")) != key


def test_rfc4475_badbranch() -> None:
    """RFC 4475 section 3.2.1: a branch that is only the magic cookie is no RFC 3261
    transaction id; matching falls back to RFC 2543, so two requests sharing that branch
    are still different transactions, and a real retransmission still matches."""
    text = """
        OPTIONS sip:user@example.com SIP/2.0
        To: sip:user@example.com
        From: sip:caller@example.org;tag=33242
        Max-Forwards: 3
        Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK
        Accept: application/sdp
        Call-ID: {call_id}
        CSeq: 8 OPTIONS

        """
    first = as_request(text.format(call_id="badbranch.sadonfo23i420jv0as0derf3j3n"))
    key = server_key(first)
    assert key.branch is None and key.rfc2543 is not None
    assert key.rfc2543.call_id == "badbranch.sadonfo23i420jv0as0derf3j3n"
    layer = TransactionLayer()
    assert kinds(layer.receive_request(first, 0.0)) == [Deliver]
    retransmission = as_request(text.format(call_id="badbranch.sadonfo23i420jv0as0derf3j3n"))
    assert layer.receive_request(retransmission, 0.5) == []
    other = as_request(text.format(call_id="another-call@192.0.2.1"))
    assert kinds(layer.receive_request(other, 0.6)) == [Deliver]
    assert len(layer.servers) == 2
    with pytest.raises(TransactionError):  # never send a bare cookie ourselves
        layer.send_request(invite("z9hG4bK"), 0.0)


def test_new_branch_is_rfc3261_and_injectable() -> None:
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) > len("z9hG4bK")
    assert invite(branch).top_via.has_rfc3261_branch
    assert new_branch() != branch
    assert new_branch(random.Random(7)) == new_branch(random.Random(7))


# --- the layer -----------------------------------------------------------------------------


def test_layer_absorbs_request_retransmissions() -> None:
    layer = TransactionLayer()
    first = layer.receive_request(invite(), 0.0, peer=("192.0.2.7", 5062))
    assert kinds(first) == [Deliver]
    tx = delivered_to(first)
    assert isinstance(tx, InviteServerTransaction) and tx.peer == ("192.0.2.7", 5062)
    assert layer.receive_request(invite(), 0.1) == []  # same transaction, not delivered again
    trying = layer.handle_timer(0.2)
    assert kinds(trying) == [Send]
    assert layer.receive_request(invite(), 0.3) == trying  # the 100 again
    assert len(layer) == 1


def test_layer_matches_responses_by_branch_and_method() -> None:
    layer = TransactionLayer()
    inv_tx, sent = layer.send_request(invite(), 0.0, peer="edge")
    assert sent == [Send(inv_tx.request, inv_tx)]
    assert inv_tx.peer == "edge"  # the shell reads the destination from Send.transaction
    cancel_tx, _ = layer.send_request(cancel_for(invite()), 1.0)
    assert isinstance(cancel_tx, NonInviteClientTransaction)
    ok = reply(cancel_tx.request, 200)
    assert layer.receive_response(ok, 1.1) == [Deliver(ok, cancel_tx)]
    terminated = reply(inv_tx.request, 487)
    assert isinstance(inv_tx, InviteClientTransaction)
    actions = layer.receive_response(terminated, 1.2)
    assert inv_tx.ack is not None
    assert actions == [Deliver(terminated, inv_tx), Send(inv_tx.ack, inv_tx)]
    assert layer.find_client(terminated) is inv_tx


def test_layer_stray_responses() -> None:
    layer = TransactionLayer()
    unknown = reply(invite("z9hG4bKnobody"), 200)
    assert layer.receive_response(unknown, 0.0) == [StrayResponse(unknown)]
    tx, _ = layer.send_request(invite(), 0.0)
    layer.receive_response(reply(tx.request, 200), 1.0)
    assert tx.state is InviteClientState.ACCEPTED
    run(layer, 100.0)  # Timer M
    assert len(layer) == 0
    late = reply(tx.request, 200)
    assert layer.receive_response(late, 101.0) == [StrayResponse(late)]


def test_layer_ack_for_2xx_goes_to_the_tu() -> None:
    layer = TransactionLayer(auto_trying=False)
    tx = delivered_to(layer.receive_request(invite(), 0.0))
    assert isinstance(tx, InviteServerTransaction)
    layer.send_response(tx, make_response(tx.request, 200, to_tag="b1"), 0.5)
    # The ACK for a 2xx is its own transaction: new branch, no match, straight to the TU.
    ack = ack_text(
        tx.request,
        "Bob <sip:bob@biloxi.com>;tag=b1",
        "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKack2xx",
    )
    assert layer.receive_request(ack, 0.6) == [Deliver(ack)]
    assert tx.state is InviteServerState.ACCEPTED
    # An ACK that reuses the INVITE branch matches the Accepted transaction: also to the TU.
    same_branch = ack_text(tx.request, "Bob <sip:bob@biloxi.com>;tag=b1")
    assert layer.receive_request(same_branch, 0.7) == [Deliver(same_branch, tx)]
    assert len(layer) == 1


def test_layer_ack_for_non2xx_confirms_the_invite_transaction() -> None:
    layer = TransactionLayer(auto_trying=False)
    layer.receive_request(invite(), 0.0)
    key = server_key(invite())
    layer.send_response(key, make_response(invite(), 486, to_tag="b1"), 0.1)
    ack = ack_text(invite(), "Bob <sip:bob@biloxi.com>;tag=b1")
    assert layer.find_server(ack) is layer.servers[key]
    tx = layer.servers[key]
    assert layer.receive_request(ack, 0.2) == []
    assert tx.state is InviteServerState.CONFIRMED
    assert run(layer, 100.0) == [(5.2, Terminated(key, tx))]  # Timer I = T4
    assert len(layer) == 0


def test_rfc2543_fallback_retransmission_and_ack() -> None:
    """No branch: Request-URI, tags, Call-ID, CSeq and top Via identify the transaction; the
    ACK matches when its To tag is the one of our response."""
    layer = TransactionLayer(auto_trying=False)
    inv = invite(None)
    assert server_key(inv).rfc2543 is not None
    tx = delivered_to(layer.receive_request(inv, 0.0))
    assert isinstance(tx, InviteServerTransaction)
    assert layer.receive_request(invite(None), 0.3) == []  # retransmission absorbed
    assert kinds(layer.receive_request(invite(None, cseq=314160), 0.3)) == [Deliver]
    layer.send_response(tx, make_response(inv, 486, to_tag="x1"), 0.5)
    wrong_tag = ack_text(inv, "Bob <sip:bob@biloxi.com>;tag=other")
    assert layer.find_server(wrong_tag) is None
    assert layer.receive_request(wrong_tag, 0.6) == [Deliver(wrong_tag)]
    assert tx.state is InviteServerState.COMPLETED
    ack = ack_text(inv, "Bob <sip:bob@biloxi.com>;tag=x1")
    assert layer.find_server(ack) is tx
    assert layer.receive_request(ack, 0.7) == []
    assert state_of(tx) is InviteServerState.CONFIRMED


def test_rfc2543_reinvite_ack_matches() -> None:
    """A re-INVITE already carries the To tag; its ACK carries the same one."""
    layer = TransactionLayer(auto_trying=False)
    reinvite = invite(None, to="Bob <sip:bob@biloxi.com>;tag=dlg1", cseq=314161)
    tx = delivered_to(layer.receive_request(reinvite, 0.0))
    assert isinstance(tx, InviteServerTransaction)
    layer.send_response(tx, make_response(reinvite, 488), 0.1)
    ack = ack_text(reinvite, "Bob <sip:bob@biloxi.com>;tag=dlg1")
    assert layer.receive_request(ack, 0.2) == []
    assert tx.state is InviteServerState.CONFIRMED


def test_cancel_matches_invite_by_branch() -> None:
    layer = TransactionLayer()
    inv = invite()
    layer.receive_request(inv, 0.0)
    cancel = cancel_for(inv)
    assert cancel_target_key(cancel) == server_key(inv)
    # CANCEL has its own (non-INVITE) transaction and goes up to the TU
    assert isinstance(delivered_to(layer.receive_request(cancel, 1.0)), NonInviteServerTransaction)
    target = layer.find_cancel_target(cancel)
    assert target is not None and target.request is inv
    other_branch = cancel_for(inv, branch_via=f"SIP/2.0/UDP pc33.atlanta.com;branch={BRANCH}x")
    assert layer.find_cancel_target(other_branch) is None
    other_host = cancel_for(inv, branch_via=f"SIP/2.0/UDP pc99.atlanta.com;branch={BRANCH}")
    assert layer.find_cancel_target(other_host) is None
    assert layer.find_cancel_target(cancel_for(register())) is None


def test_cancel_matches_invite_by_rfc2543_rule() -> None:
    layer = TransactionLayer()
    inv = invite(None)
    layer.receive_request(inv, 0.0)
    cancel = cancel_for(inv)
    assert cancel_target_key(cancel).rfc2543 is not None
    target = layer.find_cancel_target(cancel)
    assert target is not None and target.request is inv
    assert layer.find_cancel_target(cancel_for(inv, cseq=1)) is None
    moved = cancel_for(inv, branch_via="SIP/2.0/UDP pc34.atlanta.com")
    assert layer.find_cancel_target(moved) is None


def test_layer_timers_across_transactions() -> None:
    layer = TransactionLayer()
    inv_tx, _ = layer.send_request(invite(), 0.0)
    reg_tx, _ = layer.send_request(register(), 0.2)
    assert layer.next_timer() == 0.5
    first = layer.handle_timer(0.5)
    assert first == [Send(inv_tx.request, inv_tx)]
    assert layer.next_timer() == 0.7
    events = run(layer, 100.0)
    timeouts = [(t, a.transaction) for t, a in events if isinstance(a, Timeout)]
    assert timeouts == [(32.0, inv_tx), (32.2, reg_tx)]
    assert len(layer) == 0 and layer.next_timer() is None


def test_layer_counts_retransmissions_by_method_and_final_status() -> None:
    """What loadgen reports as retransmissions: timer A/E re-sent requests, timer G finals."""
    counted: Counter[str] = Counter()
    layer = TransactionLayer(retransmissions=counted)
    layer.send_request(invite(), 0.0)
    layer.send_request(register(), 0.0)
    req = invite()
    layer.receive_request(req, 0.0)
    layer.send_response(server_key(req), make_response(req, 486, to_tag="b"), 0.0)
    layer.handle_timer(0.5)  # timers A, E and G: one of each
    layer.handle_timer(1.5)  # A and G double to 1 s, E to 1 s: one of each again
    assert counted == {"INVITE": 2, "REGISTER": 2, "486": 2}
    assert TransactionLayer().retransmissions is None  # counting only when asked for


def test_layer_late_handle_timer_fires_in_deadline_order() -> None:
    """A late event loop: everything due fires in one call, the timeout first, and no burst
    of stale retransmissions follows it."""
    layer = TransactionLayer()
    tx, _ = layer.send_request(invite(), 0.0)
    actions = layer.handle_timer(50.0)
    assert kinds(actions) == [Timeout, Terminated]
    assert actions[0] == Timeout(tx, Timer.B)


def test_layer_send_response_by_key_and_cleanup() -> None:
    layer = TransactionLayer()
    req = register()
    layer.receive_request(req, 0.0, reliable=True)
    key = server_key(req)
    ok = make_response(req, 200, to_tag="r1")
    assert kinds(layer.send_response(key, ok, 0.1)) == [Send, Terminated]
    assert len(layer) == 0
    with pytest.raises(TransactionError):
        layer.send_response(key, ok, 0.2)
    assert kinds(layer.receive_request(register(), 0.3)) == [Deliver]  # a new transaction


def test_layer_transport_error_removes_client() -> None:
    layer = TransactionLayer()
    tx, _ = layer.send_request(register(), 0.0)
    assert layer.transport_error(tx, 0.1) == [TransportError(tx), Terminated(tx.key, tx)]
    assert len(layer) == 0 and layer.next_timer() is None


def test_layer_rejects_duplicate_branch_and_ack() -> None:
    layer = TransactionLayer()
    layer.send_request(invite(), 0.0)
    with pytest.raises(TransactionError):
        layer.send_request(invite(), 0.1)
    with pytest.raises(TransactionError):
        layer.send_request(ack_text(invite(), "Bob <sip:bob@biloxi.com>;tag=b1"), 0.1)
    assert len(layer.clients) == 1
