"""The sbc's request handling: validate -> identify -> route -> forward, as a routing script.

The transaction user on top of `SipEndpoint`. Long-lived state is in the state service (one
RPC per SIP transaction at most: Register, Route, PutDialog, DeleteDialog); in-dialog requests
are routed from the signed flow tokens in our Record-Route (see flowtoken.py) with no lookup.
What is held here lives only as long as a transaction: the proxy contexts tying a UE's server
transaction to the client transactions forked from it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

from services.common.telemetry import current_span
from services.sbc.bearer_client import BearerClient, BearerUnavailable, NotAttached
from services.sbc.bearer_policy import (
    PRECONDITION_FAILURE,
    BearerDecision,
    BearerOutcome,
    Side,
    decide,
)
from services.sbc.config import SbcConfig
from services.sbc.counters import LocalCounter
from services.sbc.flowtoken import FlowToken, Hop, read_route_params, record_route_params
from services.sbc.media_client import ANSWER, CALLEE, CALLER, OFFER, MediaClient, MediaUnavailable
from services.sbc.overload import OverloadControl
from services.sbc.registrar import Registrar
from services.sbc.state_client import StateClient, StateError, StateUnavailable, transport_enum
from services.sip.endpoint import SipEndpoint
from services.sip.errors import ParseError
from services.sip.headers import Headers, NameAddr, Via, parse_name_addr
from services.sip.message import Request, Response, make_response
from services.sip.sdp import NOT_ACCEPTABLE_HERE
from services.sip.transaction import ClientTx, InviteServerTransaction, ServerTx, new_branch
from services.sip.transport import Address, Source, response_destination
from services.sip.uri import URI, parse_uri
from volte.v1 import bearer_pb2, common_pb2, media_pb2, state_pb2

# How long a relayed 2xx's anchored SDP is kept for the callee's retransmissions of it: Timer L
# (64 x T1), as long as RFC 6026 has a proxy forward them.
ANSWER_MEMORY_SECONDS = 32.0
WORKER_PARAM = "vw"


@dataclass(frozen=True)
class Answer:
    """A 2xx to an INVITE as we relayed it (see Sbc.answers)."""

    until: float
    vias: list[str]
    body: bytes
  # our Via parameter naming the worker that awaits the answer
log = logging.getLogger("volte.sbc")
tracer = trace.get_tracer("volte.sbc")
meter = metrics.get_meter("volte.sbc")

SUPPORTED = frozenset({"path", "outbound", "timer", "100rel", "replaces", "gruu"})
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, PRACK, MESSAGE"
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


def contact_address(uri: URI) -> Address:
    """Where a Contact URI says its UA is (its default port 5060), to compare with where the
    UA's requests really come from: equal means no NAT in between."""
    return (uri.host.strip("[]"), uri.port or 5060)


def aor_of(uri: URI) -> str:
    """The address-of-record of a URI: scheme, user and host, no parameters."""
    if uri.scheme == "tel":
        return f"tel:{uri.user}"
    if uri.opaque is not None:
        return str(uri)
    return f"{uri.scheme}:{uri.user_unescaped or ''}@{uri.host_lower}"


@dataclass(eq=False)
class Branch:
    target: Hop
    request: Request
    final: Response | None = None
    provisional: bool = False
    answering: bool = False  # its 2xx is being anchored / given bearers (_answered)


@dataclass(eq=False)
class ProxyContext:
    """One proxied request: the UE's server transaction and the branches forked from it."""

    server_tx: ServerTx
    request: Request
    source: Source
    started: float
    branches: dict[ClientTx, Branch] = field(default_factory=dict)
    final_sent: bool = False
    cancelled: bool = False
    decided: bool = False  # a 2xx or 6xx came: every other branch is to be cancelled
    caller_impu: str = ""
    callee_impu: str = ""
    media: str = ""  # media relay session anchoring this call, "" if none
    offer_leg: media_pb2.Leg = CALLER  # who sent the SDP offer of this transaction
    initial: bool = True  # a dialog-creating request, not one inside a dialog
    token: FlowToken | None = None  # for in-dialog requests: what our Route said
    caller: Hop | None = None  # where the request came from, once asked (Sbc._caller)

    def was_cancelled(self) -> bool:
        """Read anew after an await (a CANCEL may have come meanwhile)."""
        return self.cancelled
    caller_imsi: str = ""
    callee_imsi: str = ""


@dataclass
class CallInfo:
    """What an answered, anchored call needs for the sbc to end it itself (media timeout)."""

    call_id: str
    caller_from: str  # From of the INVITE, with the caller's tag
    callee_to: str  # To of the 2xx, with the callee's tag
    caller_contact: str
    callee_contact: str
    caller: Hop
    callee: Hop


class SbcMetrics:
    def __init__(self) -> None:
        # Counted several times per call: summed here, read at collection (counters.py).
        self.requests = LocalCounter(meter, "sbc_sip_requests", description="SIP requests")
        self.responses = LocalCounter(meter, "sbc_sip_responses", description="responses sent")
        self.registrations = LocalCounter(meter, "sbc_registrations", description="REGISTER OK")
        self.calls_started = LocalCounter(meter, "sbc_calls_started", description="answered")
        self.active_calls = LocalCounter(
            meter, "sbc_active_calls", description="calls", up_down=True
        )
        self.setup_latency = meter.create_histogram(
            "sbc_transaction_latency", unit="s", description="request in to final response out"
        )
        self.rejected = LocalCounter(meter, "sbc_overload_rejected", description="503 sent")
        self.bearer_failures = LocalCounter(
            meter, "sbc_bearer_failures",
            description="QCI-1 bearers not set up on answer, by policy and UE (required: 580)",
        )


class Sbc:
    """The transaction user: one instance per worker process."""

    def __init__(
        self,
        config: SbcConfig,
        state: StateClient,
        media: MediaClient | None = None,
        bearers: BearerClient | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.media = media
        self.bearers = bearers
        # call-id -> bearer ids of this instance's answered calls, released on BYE
        self.call_bearers: dict[str, list[str]] = {}
        # IMSI -> call-ids, to end the calls of UEs whose eNB went away
        self.calls_by_imsi: dict[str, set[str]] = {}
        self.calls: dict[str, CallInfo] = {}  # by media session id
        # (call-id, CSeq number, To tag) -> what a 2xx to an INVITE was relayed with: until
        # when to keep it, the caller's Via stack, the (anchored) body; oldest first. The
        # callee retransmits its 2xx until the ACK comes, also after we let the transaction
        # go: each copy goes to the caller as the first did (RFC 6026), with our SDP, not the
        # callee's real media address, and the Vias topology hiding took off its request.
        self.answers: OrderedDict[tuple[str, int, str], Answer] = OrderedDict()
        # INVITE client transactions whose 2xx we refused (bearer policy): the ACK to send
        # again for each retransmission of that 2xx, for as long as the transaction lives.
        self.refused: weakref.WeakKeyDictionary[ClientTx, tuple[Request, Source]] = (
            weakref.WeakKeyDictionary()
        )
        self.endpoint = SipEndpoint(self)
        self.key = (config.nonce_secret or os.urandom(32).hex()).encode()
        self.overload = OverloadControl(
            target_latency=config.overload_target_ms / 1000,
            rate=config.overload_initial_rate,
        )
        self.registrar = Registrar(config, state, self.key, self.endpoint)
        self.metrics = SbcMetrics()
        self.by_client: dict[ClientTx, ProxyContext] = {}
        self.by_server: dict[ServerTx, ProxyContext] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = config.sip_port
        # Where responses to what we forward come back. With several workers on one shared
        # port (SO_REUSEPORT) the kernel would hand a response to any of them, so each worker
        # puts a port of its own in the Via of requests it forwards over UDP.
        self.via_port = config.sip_port
        self.draining = False
        self.next_hop: Hop | None = None
        if config.next_hop:
            host, _, port = config.next_hop.rpartition(":")
            self.next_hop = Hop("UDP", (host.strip("[]"), int(port)))

    async def start(self) -> None:
        bound = await self.endpoint.listen(
            self.config.sip_listen, self.config.sip_port, reuse_port=self.config.shared_port
        )
        self.port = bound[1]
        self.via_port = self.port
        if self.media is not None:
            self._spawn(self._watch_media())
        if self.bearers is not None:
            self._spawn(self._watch_bearers())
        if self.config.shared_port:
            own = await self.endpoint.transport.listen_udp(self.config.sip_listen, 0)
            self.via_port = own[1]

    @property
    def _via_local(self) -> tuple[str, int]:
        return (self.config.sip_listen, self.via_port)

    def _behind_nat(self, hop: Hop) -> bool:
        """A UE that may be behind a NAT: it takes datagrams only from the port its REGISTER
        went to (RFC 5626 flows), the shared SIP port. The next hop, and UEs whose Contact is
        where they send from (`Hop.open`), take them from a worker's own port too."""
        return not hop.open and self._toward_ue(hop)

    def _local(self, hop: Hop) -> Address:
        """The UDP socket to send to `hop` from: the SIP port toward a UE that may be behind
        a NAT, else this worker's own port, so that the answers come straight back to it."""
        return (self.config.sip_listen, self.port if self._behind_nat(hop) else self.via_port)

    def _via_for(self, hop: Hop, branch: str) -> Via:
        params: dict[str, str | None] = {"branch": branch, "rport": None}
        if hop.transport != "UDP":
            port = self.port
        elif self._behind_nat(hop):
            port = self.port
            if self.config.shared_port:
                # The UE answers to the shared SIP port, where any worker may get it: this
                # names (signed) the worker that awaits it, for the one that does to hand over.
                params[WORKER_PARAM] = self._worker_tag
        else:
            port = self.via_port
        return Via(hop.transport, self.config.advertised, port, params)

    @functools.cached_property
    def _worker_tag(self) -> str:  # via_port is fixed once started
        mac = hmac.new(self.key, f"worker:{self.via_port}".encode(), hashlib.sha256)
        return f"{self.via_port}-{mac.hexdigest()[:8]}"

    def _owning_worker(self, via: Via) -> int | None:
        """The own port of the worker named by a Via's worker tag, if signed by us."""
        port, _, mac = (via.params.get(WORKER_PARAM) or "").partition("-")
        if not port.isdigit():
            return None
        expected = hmac.new(self.key, f"worker:{port}".encode(), hashlib.sha256)
        return int(port) if hmac.compare_digest(mac, expected.hexdigest()[:8]) else None

    def _ours(self, host: str, port: int | None) -> bool:
        return host == self.config.advertised and (port or 5060) in (self.port, self.via_port)

    async def stop(self) -> None:
        await self.endpoint.close()
        for task in list(self._tasks):
            task.cancel()

    # -- TransactionUser -----------------------------------------------------------------------
    def on_request(self, request: Request, tx: ServerTx | None, source: Source) -> None:
        self.metrics.requests.add(1, {"method": request.method})
        if tx is None:  # ACK for a 2xx: forwarded statelessly along the dialog's route
            try:  # no state lookup: done here rather than in a task of its own
                self._forward_ack(request, source)
            except Exception:
                log.exception("request handling failed")
            return
        self._spawn(self._handle(request, tx, source))

    def on_response(self, response: Response, tx: ClientTx | None, source: Source) -> None:
        ctx = self.by_client.get(tx) if tx is not None else None
        if ctx is None:
            refused = self.refused.get(tx) if tx is not None else None
            if refused is not None:  # the callee did not hear our ACK: again
                self.endpoint.send_stateless(*refused)
                return
            self._forward_stray(response)
            return
        self._branch_response(ctx, tx, response)  # type: ignore[arg-type]

    def on_timeout(self, tx: ClientTx | ServerTx) -> None:
        ctx = self.by_client.get(tx)  # type: ignore[arg-type]
        if ctx is not None and ctx.branches[tx].final is None:  # type: ignore[index]
            self._branch_response(ctx, tx, make_response(tx.request, 408))  # type: ignore[arg-type]

    # -- the routing script --------------------------------------------------------------------
    async def _handle(self, request: Request, tx: ServerTx, source: Source) -> None:
        started = time.monotonic()
        with current_span(tracer, f"SIP {request.method}") as span:
            span.set_attribute("sip.call_id", request.call_id)
            try:
                await self._route(request, tx, source, started)
            except ParseError as exc:
                self._abandon(tx)
                if exc.status == NOT_ACCEPTABLE_HERE:  # bad SDP
                    # RFC 3261 21.4.26: the usual phrase, and why in a Warning (399: other).
                    self._reply(tx, exc.status, extra=[("Warning", self._warning(exc.reason))])
                else:
                    self._reply(tx, exc.status, exc.reason)
            # One name per handler: mypyc gives a name one type per function.
            except StateUnavailable as state_down:
                self._abandon(tx)
                log.warning("state store unavailable", extra={"error": str(state_down)})
                self._reply(tx, 503, "State Store Unavailable", extra=[("Retry-After", "2")])
            except StateError:
                self._abandon(tx)
                log.exception("state store refused a call")
                self._reply(tx, 500)
            except MediaUnavailable as media_down:
                self._abandon(tx)
                log.warning("media relay unavailable", extra={"error": str(media_down)})
                self._reply(tx, 503, "Media Relay Unavailable", extra=[("Retry-After", "2")])
            finally:
                elapsed = time.monotonic() - started
                if request.method in ("INVITE", "REGISTER"):
                    self.overload.record_latency(elapsed, time.monotonic())
                answered = tx.last_response
                if answered is not None and answered.status >= 200:  # answered here, not relayed
                    self.metrics.setup_latency.record(elapsed, {"method": request.method})

    async def _route(self, request: Request, tx: ServerTx, source: Source, started: float) -> None:
        request.validate()  # strict: input from UEs is untrusted
        problem = self._sanity(request)
        if problem is not None:
            status, reason, extra = problem
            self._reply(tx, status, reason, extra=extra)
            return
        method = request.method
        if method == "CANCEL":
            self._cancel(request, tx)
            return
        if request.to.tag is None:
            # RFC 3261 16.4: a preloaded Route naming us (outbound proxy, Service-Route) is
            # ours to remove; an initial request is then routed like any other.
            while self._our_route(request):
                request.headers.pop_first_value("route")
        if request.to.tag is not None or self._our_route(request):
            await self._in_dialog(request, tx, source, started)
            return
        if self._is_for_us(request):
            if method == "OPTIONS":
                self._reply(tx, 200, extra=[("Allow", ALLOW)])
                return
            if method != "REGISTER":
                self._reply(tx, 405, extra=[("Allow", "OPTIONS, REGISTER")])
                return
        if method in ("INVITE", "REGISTER") and not self._admit():
            retry = str(self.overload.retry_after())
            self._reply(tx, 503, "Overloaded", extra=[("Retry-After", retry)])
            return
        if method == "REGISTER":
            status = await self.registrar.handle(request, tx, source)
            if status == 200:
                self.metrics.registrations.add(1)
            return
        await self._out_of_dialog(request, tx, source, started)

    def _sanity(self, request: Request) -> tuple[int, str | None, list[tuple[str, str]]] | None:
        """RFC 3261 section 16.3: checks before anything is looked up."""
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards == 0 and not self._is_for_us(request):
            return 483, None, []
        unsupported = [
            t for t in request.headers.values("proxy-require") if t.lower() not in SUPPORTED
        ]
        if unsupported:
            return 420, None, [("Unsupported", ", ".join(unsupported))]
        if request.uri.scheme not in ("sip", "sips", "tel"):
            return 416, None, []
        if self._looped(request):
            return 482, None, []
        return None

    def _looped(self, request: Request) -> bool:
        ours = [via for via in request.vias if self._signed_by_us(via)]
        if not ours:  # the usual case: no need to hash the loop key
            return False
        key = "z9hG4bK" + self._loop_key(request)
        return any((via.branch or "").startswith(key) for via in ours)

    def _admit(self) -> bool:
        if self.draining or not self.overload.admit(time.monotonic()):
            self.metrics.rejected.add(1)
            return False
        return True

    def _is_for_us(self, request: Request) -> bool:
        uri = request.uri
        if uri.user is not None:
            return False
        return uri.host_lower in (self.config.domain.lower(), self.config.advertised.lower())

    def _our_uri(self, uri: URI) -> bool:
        return uri.host_lower == self.config.advertised.lower() and (uri.port or 5060) == self.port

    def _our_route(self, request: Request) -> bool:
        first = request.headers.first_value("route")
        return first is not None and self._our_uri(parse_name_addr(first).uri)

    # -- out of dialog: identify the caller, find the callee, fork --------------------------------
    async def _out_of_dialog(
        self, request: Request, tx: ServerTx, source: Source, started: float
    ) -> None:
        ctx = ProxyContext(tx, request, source, started)
        self.by_server[tx] = ctx
        callee_uri = request.uri
        home = callee_uri.host_lower == self.config.domain.lower() or callee_uri.scheme == "tel"
        trusted = self.next_hop is not None and source.remote == self.next_hop.address
        claimed = request.headers.first_value("p-preferred-identity")
        caller_uri = parse_name_addr(claimed).uri if claimed else request.from_.uri
        routed = await self.state.route(
            state_pb2.RouteRequest(
                caller_impu="" if trusted else aor_of(caller_uri),
                source=common_pb2.SocketAddress(ip=source.remote[0], port=source.remote[1]),
                transport=transport_enum(source.transport),
                callee_impu=aor_of(callee_uri) if home else "",
            )
        )
        if ctx.cancelled:
            self._final(ctx, make_response(request, 487))
            return
        if not trusted:
            if not routed.caller_registered:
                self._final(ctx, make_response(request, 403, "Not Registered"))
                return
            self._assert_identity(request, routed.asserted_impu)
        elif request.headers.get("p-charging-vector") is None:
            self._add_charging_vector(request)
        ctx.caller_impu = routed.asserted_impu or aor_of(request.from_.uri)
        ctx.caller_imsi = routed.caller_imsi
        targets: list[tuple[URI, Hop]] = []
        if home:
            if not routed.callee_known:
                self._final(ctx, make_response(request, 404))
                return
            for binding in routed.callee_bindings:
                contact = parse_uri(binding.contact_uri)
                targets.append((contact, self._reach(binding, contact)))
                ctx.callee_imsi = ctx.callee_imsi or binding.imsi
            if not targets:
                self._final(ctx, make_response(request, 480))
                return
            ctx.callee_impu = aor_of(callee_uri)
        elif self.next_hop is not None and not trusted:
            targets.append((callee_uri, self.next_hop))
            ctx.callee_impu = aor_of(callee_uri)
        else:
            self._final(ctx, make_response(request, 404, "No Route To Domain"))
            return
        if request.method == "INVITE" and self._has_sdp(request) and self.media is not None:
            ctx.media = await self.media.create(request.call_id, request.from_.tag or "")
            try:
                anchored = await self.media.anchor(ctx.media, request.body, OFFER, CALLER)
            except (ParseError, MediaUnavailable):  # 488 / 503: the relay keeps nothing
                self._release_media_later(ctx)
                raise
            request.set_body(anchored)
            if ctx.was_cancelled():  # while we waited for the relay (_final frees the ports)
                self._final(ctx, make_response(request, 487))
                return
        for n, (uri, hop) in enumerate(targets):
            self._fork(ctx, uri, hop, n, record_route=request.method in DIALOG_METHODS)

    @staticmethod
    def _has_sdp(message: Request | Response) -> bool:
        ctype = (message.headers.get("content-type") or "").lower()
        return bool(message.body) and ctype.startswith("application/sdp")

    def _reach(self, binding: state_pb2.Binding, contact: URI) -> Hop:
        """Where a UE is reached: the address its REGISTER came from (NAT), over its flow.

        Over TCP that flow is the connection the UE registered on; when it is gone (and
        without RFC 5626 outbound nothing can revive it) we connect to the Contact instead.
        """
        received = (binding.received.ip, binding.received.port)
        if binding.transport != common_pb2.SIP_TRANSPORT_TCP:
            return Hop("UDP", received, open=contact_address(contact) == received)
        if self.endpoint.transport.has_flow(received):
            return Hop("TCP", received)
        return Hop("TCP", (contact.host.strip("[]"), contact.port or 5060))

    def _assert_identity(self, request: Request, impu: str) -> None:
        """RFC 3325: what the UE claimed is replaced by what we know; a fresh charging icid."""
        h = request.headers
        h.remove("p-preferred-identity")
        h.remove("p-asserted-identity")
        if impu:
            h.add_first("P-Asserted-Identity", f"<{impu}>")
        self._add_charging_vector(request)

    def _add_charging_vector(self, request: Request) -> None:
        request.headers.set(
            "P-Charging-Vector",
            f"icid-value={os.urandom(16).hex()};icid-generated-at={self.config.advertised}",
        )

    def _fork(self, ctx: ProxyContext, uri: URI, hop: Hop, n: int, *, record_route: bool) -> None:
        out = Request(ctx.request.method, uri, ctx.request.headers.copy(), ctx.request.body)
        mf = ctx.request.max_forwards
        out.headers.set("Max-Forwards", str(69 if mf is None else mf - 1))
        if record_route:
            params = record_route_params(self.key, self._caller(ctx), media=ctx.media)
            out.headers.add_first("Record-Route", f"<{self._own_uri(hop.transport)}{params}>")
        self._send_branch(ctx, out, hop, n)

    @staticmethod
    def _caller(ctx: ProxyContext) -> Hop:
        if ctx.caller is None:
            contacts = ctx.request.contacts
            ctx.caller = Hop.of(ctx.source, contact_address(contacts[0].uri) if contacts else None)
        return ctx.caller

    def _toward_ue(self, hop: Hop) -> bool:
        return self.next_hop is None or hop.address != self.next_hop.address

    def _hide_topology(self, out: Request, hop: Hop) -> None:
        """Toward a UE, only our Via: the hops behind us stay private. Nothing is lost, as
        responses get the Via stack of the request we received (see _branch_response)."""
        if self._toward_ue(hop):
            out.headers.remove("via")

    def _send_branch(self, ctx: ProxyContext, out: Request, hop: Hop, n: int) -> None:
        self._hide_topology(out, hop)
        via = self._via_for(hop, f"{self._branch(ctx.request, '')}.{n}")
        out.push_via(via)
        client_tx = self.endpoint.send_request(out, hop.source(self._local(hop)))
        ctx.branches[client_tx] = Branch(hop, out)
        self.by_client[client_tx] = ctx

    def _branch(self, request: Request, extra: str) -> str:
        """Our branch for a request: stable for retransmissions (same top Via). Its first
        half hashes only what a loop leaves unchanged (RFC 3261 16.3 step 4), so a request
        that comes back to us unchanged is recognised; the second half tells transactions
        apart."""
        top = request.top_via
        digest = self._loop_key(request) + hashlib.sha1(
            f"{top.branch}|{top.sent_by}|{extra}".encode()
        ).hexdigest()[:10]
        return "z9hG4bK" + digest + self._branch_mac(digest)

    def _loop_key(self, request: Request) -> str:
        seed = f"{request.uri_text}|{request.call_id}|{request.from_.tag}|{request.cseq}"
        return hashlib.sha1(seed.encode()).hexdigest()[:10]

    def _branch_mac(self, digest: str) -> str:
        # Signed, so any worker or instance sharing the key knows a Via as ours (see
        # _forward_stray) even when another process put it there.
        return hmac.new(self.key, digest.encode(), hashlib.sha256).hexdigest()[:8]

    def _signed_by_us(self, via: Via) -> bool:
        branch = via.branch or ""
        digest, mac = branch[7:27], branch[27:35]
        return (
            via.host == self.config.advertised
            and branch.startswith("z9hG4bK")
            and len(mac) == 8
            and hmac.compare_digest(mac, self._branch_mac(digest))
        )

    def _own_uri(self, transport: str) -> str:
        host = self.config.advertised
        host = f"[{host}]" if ":" in host else host
        suffix = ";transport=tcp" if transport == "TCP" else ""
        return f"sip:{host}:{self.port}{suffix};lr"

    # -- in dialog: the Route says where --------------------------------------------------------
    def _next_hop_in_dialog(
        self, request: Request, source: Source
    ) -> tuple[Hop | None, FlowToken | None]:
        """Pop our Route entries, then follow the next Route, or our flow token."""
        token: FlowToken | None = None
        while True:
            first = request.headers.first_value("route")
            if first is None:
                break
            route = parse_name_addr(first)
            if not self._our_uri(route.uri):
                host = route.uri.host.strip("[]")
                port = route.uri.port or 5060
                transport = (route.uri.param("transport") or "udp").upper()
                return Hop("TCP" if transport == "TCP" else "UDP", (host, port)), token
            request.headers.pop_first_value("route")
            token = read_route_params(self.key, dict(route.uri.params)) or token
        if token is not None:
            if source.remote == token.caller.address:
                return token.callee, token
            return token.caller, token
        return None, None

    async def _in_dialog(
        self, request: Request, tx: ServerTx, source: Source, started: float
    ) -> None:
        hop, token = self._next_hop_in_dialog(request, source)
        if hop is None:
            self._reply(tx, 481 if request.to.tag else 404)
            return
        ctx = ProxyContext(tx, request, source, started, initial=False, token=token)
        self.by_server[tx] = ctx
        if token is not None and token.media and self.media is not None:
            ctx.media = token.media
            ctx.offer_leg = CALLER if source.remote == token.caller.address else CALLEE
            if request.method in ("INVITE", "UPDATE") and self._has_sdp(request):
                # re-INVITE / UPDATE: hold, resume, codec change: the relay follows.
                request.set_body(
                    await self.media.anchor(ctx.media, request.body, OFFER, ctx.offer_leg)
                )
        out = Request(request.method, request.uri, request.headers.copy(), request.body)
        mf = request.max_forwards
        out.headers.set("Max-Forwards", str(69 if mf is None else mf - 1))
        self._send_branch(ctx, out, hop, 0)

    def _forward_ack(self, ack: Request, source: Source) -> None:
        try:
            hop, _ = self._next_hop_in_dialog(ack, source)
        except ParseError:
            return
        if hop is None:
            return
        out = Request("ACK", ack.uri, ack.headers.copy(), ack.body)
        self._hide_topology(out, hop)
        out.push_via(self._via_for(hop, self._branch(ack, "ack")))
        self.endpoint.send_stateless(out, hop.source(self._local(hop)))

    # -- responses: aggregation (RFC 3261 section 16.7) -----------------------------------------
    def _branch_response(self, ctx: ProxyContext, tx: ClientTx, response: Response) -> None:
        branch = ctx.branches.get(tx)
        if branch is None:
            return
        # Upstream gets the Via stack of the request it sent: matched by our transaction, the
        # response is ours to answer with, whatever Vias a broken UAS echoed.
        response.headers.remove("via")
        for via in ctx.request.headers.get_all("via"):
            response.headers.add("Via", via)
        status = response.status
        if status < 200:
            branch.provisional = True
            if status != 100 and not ctx.final_sent and not ctx.decided:
                if ctx.media and self._has_sdp(response):
                    self._spawn(self._relay_anchored(ctx, response, tx))
                else:
                    self._relay(ctx, response, tx)
            if ctx.cancelled or ctx.decided:
                # RFC 3261 section 16.10: a branch is cancelled once it has rung.
                self._send_cancel(branch)
            return
        first_final = branch.final is None
        branch.final = response
        if status < 300:
            if ctx.request.method == "INVITE" and ctx.initial:
                self._spawn(self._answered(ctx, tx, response))
            elif ctx.media and self._has_sdp(response):
                self._spawn(self._final_anchored(ctx, response))
            else:
                self._final(ctx, response)
            self._cancel_others(ctx, tx)
            return
        if status >= 600:
            self._cancel_others(ctx, tx)
        if first_final and all(b.final is not None for b in ctx.branches.values()):
            if any(b.final is not None and b.final.status < 300 for b in ctx.branches.values()):
                # A 2xx won (and is relayed by _answered): this branch only had to end.
                if ctx.final_sent:
                    self._forget(ctx)
                return
            self._final(ctx, self._choose(ctx))

    def _is_our_via(self, response: Response) -> bool:
        via = response.top_via
        return self._ours(via.host, via.port)

    def _choose(self, ctx: ProxyContext) -> Response:
        finals = [b.final for b in ctx.branches.values() if b.final is not None]
        six = [r for r in finals if r.status >= 600]
        if six:
            return six[0]
        lowest = min(r.status // 100 for r in finals)
        pool = [r for r in finals if r.status // 100 == lowest]
        preferred = [r for r in pool if r.status in (401, 407, 415, 420, 484)]
        chosen = (preferred or pool)[0]
        if chosen.status == 503:  # 16.7 step 6: a 503 from downstream is not ours to give
            return make_response(ctx.request, 500)
        if chosen.status == 408 and ctx.request.method == "INVITE":
            return make_response(ctx.request, 408)
        return chosen

    async def _answered(self, ctx: ProxyContext, tx: ClientTx, response: Response) -> None:
        """A 2xx to INVITE, one at a time per branch: a retransmission that comes while the
        first is still being anchored and given bearers is dropped (the callee sends it
        again until it hears an ACK)."""
        branch = ctx.branches[tx]
        if branch.answering:
            return
        branch.answering = True
        try:
            await self._answer(ctx, tx, response)
        finally:
            branch.answering = False

    async def _answer(self, ctx: ProxyContext, tx: ClientTx, response: Response) -> None:
        """Record the dialog (for clean-up and failover), then relay the 2xx; or, when the
        bearer policy says so, refuse it (_refuse_answer)."""
        branch = ctx.branches[tx]
        request = ctx.request
        if ctx.media and self.media is not None and self._has_sdp(response):
            try:
                response.body = await self.media.anchor(
                    ctx.media, response.body, ANSWER, CALLEE
                )
                response.headers.set("Content-Length", str(len(response.body)))
            except (MediaUnavailable, ParseError) as exc:
                log.warning("answer not anchored", extra={"error": str(exc)})
        if ctx.media or self.bearers is not None:  # calls the sbc may have to end itself
            contacts = response.contacts or []
            self.calls[ctx.media or f"call:{request.call_id}"] = CallInfo(
                call_id=request.call_id,
                caller_from=request.headers.get("from") or "",
                callee_to=response.headers.get("to") or "",
                caller_contact=str((request.contacts or [NameAddr(request.from_.uri)])[0].uri),
                callee_contact=str(contacts[0].uri) if contacts else str(request.uri),
                caller=self._caller(ctx),
                callee=branch.target,
            )
        bearers = await self._setup_bearers(ctx, response)
        if bearers.refuse:
            self._refuse_answer(ctx, tx, response, bearers)
            return
        dialog = state_pb2.Dialog(
            id=common_pb2.DialogId(
                call_id=request.call_id,
                from_tag=request.from_.tag or "",
                to_tag=response.to.tag or "",
            ),
            state=state_pb2.Dialog.STATE_CONFIRMED,
            caller_impu=ctx.caller_impu,
            callee_impu=ctx.callee_impu,
            caller_received=common_pb2.SocketAddress(ip=ctx.source.remote[0],
                                                     port=ctx.source.remote[1]),
            caller_transport=transport_enum(ctx.source.transport),
            callee_received=common_pb2.SocketAddress(ip=branch.target.address[0],
                                                     port=branch.target.address[1]),
            callee_transport=transport_enum(branch.target.transport),
            caller_imsi=ctx.caller_imsi,
            callee_imsi=ctx.callee_imsi,
            sbc_instance=self.config.instance,
            media_session_id=ctx.media,
            bearer_ids=bearers.kept,
        )
        try:
            await self.state.put_dialog(state_pb2.PutDialogRequest(dialog=dialog))
        except (StateUnavailable, StateError) as not_stored:
            # The call goes on: in-dialog routing needs no state; only clean-up would miss it.
            log.warning(
                "dialog not stored", extra={"error": str(not_stored), "call_id": request.call_id}
            )
        if not ctx.final_sent:
            self.metrics.calls_started.add(1)
            self.metrics.active_calls.add(1)
        self._rewrite_record_route(response, ctx, branch.target)
        self._final(ctx, response, allow_repeat=True)

    def _rewrite_record_route(self, response: Response, ctx: ProxyContext, callee: Hop) -> None:
        """Add the callee's flow to our Record-Route in what goes back to the caller."""
        values = response.headers.values("record-route")
        for i, value in enumerate(values):
            rr = parse_name_addr(value)
            if self._our_uri(rr.uri) and read_route_params(self.key, dict(rr.uri.params)):
                caller = self._caller(ctx)
                params = record_route_params(self.key, caller, callee, ctx.media)
                values[i] = f"<{self._own_uri(callee.transport)}{params}>"
                response.headers.set("Record-Route", ", ".join(values))
                return

    def _relay(self, ctx: ProxyContext, response: Response, tx: ClientTx) -> None:
        if response.status < 200 and ctx.request.method == "INVITE":
            branch = ctx.branches[tx]
            if response.to.tag and response.headers.get("record-route"):
                self._rewrite_record_route(response, ctx, branch.target)
        self.endpoint.respond(ctx.server_tx, response)

    def _final(self, ctx: ProxyContext, response: Response, *, allow_repeat: bool = False) -> None:
        if ctx.final_sent and not allow_repeat:
            return
        ctx.final_sent = True
        if ctx.request.method == "INVITE" and 200 <= response.status < 300:
            self._remember_answer(ctx, response)
        self.endpoint.respond(ctx.server_tx, response)
        self.metrics.responses.add(1, {"class": f"{response.status // 100}xx"})
        self.metrics.setup_latency.record(
            time.monotonic() - ctx.started, {"method": ctx.request.method}
        )
        if ctx.request.method == "BYE" and response.status < 300:
            self._spawn(self._dialog_ended(ctx.request, ctx.media))
        elif ctx.initial and ctx.request.method == "INVITE" and response.status >= 300:
            self._release_media_later(ctx)
        if all(b.final is not None for b in ctx.branches.values()):
            self._forget(ctx)

    def _abandon(self, tx: ServerTx) -> None:
        """A request refused by an exception before it was forwarded: drop its context."""
        ctx = self.by_server.get(tx)
        if ctx is not None and not ctx.branches:
            self._forget(ctx)

    def _warning(self, text: str) -> str:
        """A Warning header value (RFC 3261 20.43) from our host, code 399."""
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        host = self.config.advertised
        return f'399 {f"[{host}]" if ":" in host else host} "{quoted}"'

    def _remember_answer(self, ctx: ProxyContext, response: Response) -> None:
        now = time.monotonic()
        while self.answers and next(iter(self.answers.values())).until < now:
            self.answers.popitem(last=False)
        key = (response.call_id, response.cseq.seq, response.to.tag or "")
        self.answers[key] = Answer(now + ANSWER_MEMORY_SECONDS,
                                   ctx.request.headers.get_all("via"), response.body)
        self.answers.move_to_end(key)

    def _relayed_answer(self, response: Response) -> Answer | None:
        """What we relayed a 2xx to an INVITE with, if this is a copy of it."""
        if response.status // 100 != 2 or response.cseq.method != "INVITE":
            return None
        answer = self.answers.get((response.call_id, response.cseq.seq, response.to.tag or ""))
        return answer if answer is not None and answer.until >= time.monotonic() else None

    def _forget(self, ctx: ProxyContext) -> None:
        self.by_server.pop(ctx.server_tx, None)
        for tx in ctx.branches:
            self.by_client.pop(tx, None)

    async def _dialog_ended(self, bye: Request, media: str = "") -> None:
        self.metrics.active_calls.add(-1)
        self.calls.pop(f"call:{bye.call_id}", None)
        known = self.call_bearers.get(bye.call_id, [])
        await self._release_bearers(bye.call_id)
        if media:
            await self._release_media(media)
        dialog_id = common_pb2.DialogId(
            call_id=bye.call_id, from_tag=bye.from_.tag or "", to_tag=bye.to.tag or ""
        )
        try:
            reply = await self.state.delete_dialog(state_pb2.DeleteDialogRequest(id=dialog_id))
        except (StateUnavailable, StateError, LookupError) as exc:
            log.info("dialog not deleted", extra={"error": str(exc), "call_id": bye.call_id})
            return
        # Bearers another worker (or a worker since restarted) set up: the dialog names them.
        await self._release_bearer_ids(b for b in reply.bearer_ids if b not in known)

    async def _relay_anchored(self, ctx: ProxyContext, response: Response, tx: ClientTx) -> None:
        """An early answer (183 with SDP): anchored like the final one, then relayed."""
        assert self.media is not None
        try:
            response.set_body(await self.media.anchor(ctx.media, response.body, ANSWER, CALLEE))
        except (MediaUnavailable, ParseError) as exc:
            log.warning("early answer not anchored", extra={"error": str(exc)})
        if not ctx.final_sent:
            self._relay(ctx, response, tx)

    async def _final_anchored(self, ctx: ProxyContext, response: Response) -> None:
        """The answer to a re-INVITE / UPDATE offer, from the other leg."""
        assert self.media is not None
        answering = CALLEE if ctx.offer_leg == CALLER else CALLER
        try:
            response.set_body(await self.media.anchor(ctx.media, response.body, ANSWER, answering))
        except (MediaUnavailable, ParseError) as exc:
            log.warning("answer not anchored", extra={"error": str(exc)})
        self._final(ctx, response)

    async def _setup_bearers(self, ctx: ProxyContext, response: Response) -> BearerDecision:
        """QCI-1 bearers for both UEs, at once, and what the bearer policy makes of them
        (bearer_policy.py). A failure is logged (once per call) and counted."""
        policy = self.config.bearer_policy
        both: list[tuple[Side, str]] = [("caller", ctx.caller_imsi), ("callee", ctx.callee_imsi)]
        ues = [(ue, imsi) for ue, imsi in both if imsi]
        if self.bearers is None or not ues:
            return decide(policy, ())
        call_id = ctx.request.call_id
        dialog = common_pb2.DialogId(
            call_id=call_id, from_tag=ctx.request.from_.tag or "", to_tag=response.to.tag or ""
        )
        remembered = [self.bearers.remembered_not_attached(imsi) for _, imsi in ues]
        answers: list[str | BaseException]
        if all(remembered):  # no RPC to make (plain SIP UEs): no tasks to gather either
            answers = [NotAttached(why or "") for why in remembered]
        else:
            answers = await asyncio.gather(
                *(self.bearers.setup(imsi, dialog) for _, imsi in ues), return_exceptions=True
            )
        decision = decide(policy, [
            BearerOutcome(ue, imsi, answer) if isinstance(answer, str)
            else BearerOutcome(ue, imsi, error=str(answer),
                               attached=not isinstance(answer, NotAttached))
            for (ue, imsi), answer in zip(ues, answers, strict=True)
        ])
        for failed in decision.failed:
            reason = "error" if failed.attached else "not_attached"
            self.metrics.bearer_failures.add(
                1, {"policy": policy, "ue": failed.ue, "reason": reason})
        if decision.failed:
            then = "call refused (580)" if decision.refuse else "call goes on best-effort"
            # A UE attached nowhere (a plain SIP UE) is no fault when the call goes on: counted,
            # logged at DEBUG; anything else, or a refused call, is a warning.
            fault = decision.refuse or any(o.attached for o in decision.failed)
            level = logging.WARNING if fault else logging.DEBUG
            if log.isEnabledFor(level):  # per call at DEBUG: not built to be dropped
                log.log(level, f"{decision.text}: {then}", extra={
                    "call_id": call_id, "policy": policy,
                    "failed": {o.ue: {"imsi": o.imsi, "error": o.error} for o in decision.failed},
                })
        if decision.kept:
            self.call_bearers[call_id] = list(decision.kept)
            for outcome in decision.outcomes:
                if outcome.up:
                    self.calls_by_imsi.setdefault(outcome.imsi, set()).add(call_id)
        return decision

    def _refuse_answer(
        self, ctx: ProxyContext, tx: ClientTx, response: Response, bearers: BearerDecision
    ) -> None:
        """A 2xx the bearer policy fails: the callee's leg is ACKed and ended with a BYE
        saying why, what was set up is released, the caller gets 580. Nothing of it is
        stored: no dialog was, and only this transaction (the ACK for the callee's 2xx
        retransmissions) is remembered, while it lives."""
        request = ctx.request
        branch = ctx.branches[tx]
        self.calls.pop(ctx.media or f"call:{request.call_id}", None)
        peer = branch.target.source(self._local(branch.target))
        leg = [("From", request.headers.get("from") or ""),
               ("To", response.headers.get("to") or ""), ("Call-ID", request.call_id),
               *(("Route", r) for r in self._routes_toward_callee(response))]
        target = str((response.contacts or [NameAddr(branch.request.uri)])[0].uri)
        seq = request.cseq.seq
        ack = self._own_request("ACK", target, branch.target,
                                [*leg, ("CSeq", f"{seq} ACK")])
        self.endpoint.send_stateless(ack, peer)
        self.refused[tx] = (ack, peer)
        bye = self._own_request("BYE", target, branch.target,
                                [*leg, ("CSeq", f"{seq + 1} BYE"), ("Reason", bearers.reason)])
        self.endpoint.send_request(bye, peer)
        self._spawn(self._release_bearer_ids(bearers.to_release))
        refusal = make_response(request, PRECONDITION_FAILURE, to_tag=self._to_tag(request),
                                extra=[("Warning", self._warning(bearers.text))])
        self._final(ctx, refusal)  # an INVITE's failure: its media session goes too

    def _routes_toward_callee(self, response: Response) -> list[str]:
        """The Record-Route entries between us and the callee, in the order to visit them."""
        values = response.headers.values("record-route")
        for i, value in enumerate(values):
            if self._our_uri(parse_name_addr(value).uri):
                return list(reversed(values[:i]))
        return []

    async def _release_bearers(self, call_id: str) -> None:
        ids = self.call_bearers.pop(call_id, [])
        for calls in self.calls_by_imsi.values():
            calls.discard(call_id)
        await self._release_bearer_ids(ids)

    async def _release_bearer_ids(self, ids: Iterable[str]) -> None:
        if self.bearers is None:
            return
        for bearer_id in ids:
            try:
                await self.bearers.release(bearer_id)
            except BearerUnavailable as exc:
                log.info("bearer not released", extra={"bearer": bearer_id, "error": str(exc)})

    async def _watch_bearers(self) -> None:
        """When an eNB goes, its UEs' calls end: BYE to both sides with a Reason."""
        assert self.bearers is not None
        lost = (bearer_pb2.BearerEvent.KIND_ENB_DISCONNECTED,
                bearer_pb2.BearerEvent.KIND_BEARER_LOST)
        while True:
            try:
                async for event in self.bearers.events():
                    if event.kind in lost:
                        for imsi in [*event.imsis, event.imsi]:
                            for call_id in list(self.calls_by_imsi.pop(imsi, ())):
                                self._end_call_by_id(call_id, "eNodeB lost")
            except Exception:  # the stream broke: reconnect after a pause
                log.info("bearer events interrupted", exc_info=True)
            await asyncio.sleep(1.0)

    def _end_call_by_id(self, call_id: str, text: str) -> None:
        for key, call in list(self.calls.items()):
            if call.call_id == call_id:
                self._end_call(key, text)
                return
        self._spawn(self._release_bearers(call_id))

    def _release_media_later(self, ctx: ProxyContext) -> None:
        if ctx.media:
            self._spawn(self._release_media(ctx.media))

    async def _release_media(self, session: str) -> None:
        self.calls.pop(session, None)
        if self.media is None:
            return
        try:
            await self.media.delete(session)
        except MediaUnavailable as exc:  # it times the session out by itself
            log.info("media session not deleted", extra={"error": str(exc), "session": session})

    async def _watch_media(self) -> None:
        """End calls whose media stopped: BYE to both sides with a Reason (RFC 3326)."""
        assert self.media is not None
        while True:
            try:
                async for event in self.media.events():
                    if event.kind == media_pb2.MediaEvent.KIND_MEDIA_TIMEOUT:
                        self._end_call(event.session_id, "RTP timeout")
            except MediaUnavailable as exc:
                log.info("media events interrupted", extra={"error": str(exc)})
            except Exception:  # the stream broke: reconnect after a pause
                log.info("media events interrupted", exc_info=True)
            await asyncio.sleep(1.0)

    def _end_call(self, session: str, text: str) -> None:
        call = self.calls.pop(session, None)
        if call is None:
            return  # another instance's call, or already over
        reason = ("Reason", f'SIP;cause=408;text="{text}"')
        self._send_bye(call.callee_contact, call.caller_from, call.callee_to, call, call.callee,
                       reason)
        self._send_bye(call.caller_contact, call.callee_to, call.caller_from, call, call.caller,
                       reason)
        log.info("call ended by the sbc", extra={"call_id": call.call_id, "reason": text})
        self._spawn(self._release_bearers(call.call_id))
        if not session.startswith("call:"):
            self._spawn(self._release_media(session))
        self.metrics.active_calls.add(-1)
        dialog_id = common_pb2.DialogId(call_id=call.call_id)
        self._spawn(self._forget_dialog(dialog_id, call))

    async def _forget_dialog(self, dialog_id: common_pb2.DialogId, call: CallInfo) -> None:
        dialog_id.from_tag = parse_name_addr(call.caller_from).tag or ""
        dialog_id.to_tag = parse_name_addr(call.callee_to).tag or ""
        try:
            await self.state.delete_dialog(state_pb2.DeleteDialogRequest(id=dialog_id))
        except (StateUnavailable, StateError, LookupError) as exc:
            log.info("dialog not deleted", extra={"error": str(exc), "call_id": call.call_id})

    def _send_bye(
        self, target: str, from_: str, to: str, call: CallInfo, hop: Hop,
        reason: tuple[str, str],
    ) -> None:
        # CSeq: above anything the UE's peer can have used in this dialog so far.
        bye = self._own_request("BYE", target, hop, [
            ("From", from_), ("To", to), ("Call-ID", call.call_id), ("CSeq", "999999 BYE"), reason,
        ])
        self.endpoint.send_request(bye, hop.source(self._local(hop)))

    def _own_request(
        self, method: str, target: str, hop: Hop, headers: list[tuple[str, str]]
    ) -> Request:
        """A request the sbc sends itself (as a UA) on one leg of a dialog, with our Via."""
        request = Request(method, target, Headers.of(
            [("Max-Forwards", "70"), *headers, ("Content-Length", "0")]
        ))
        request.push_via(self._via_for(hop, new_branch()))
        return request

    def _forward_stray(self, response: Response) -> None:
        """A response no transaction of ours awaits: a 2xx retransmission after the INVITE
        transaction ended, or an answer to what another worker forwarded that reached us
        (UAs that answer to where the dialog's first request came from, not to the Via).
        If our signature is on the top Via, pass it on statelessly (RFC 3261 16.11)."""
        try:
            if not self._signed_by_us(response.top_via):
                return
            owner = self._owning_worker(response.top_via)
            if owner is not None and owner not in (self.via_port, self.port):
                # Another worker of ours awaits it (the UE answered to the shared port):
                # hand it over to that worker's own port, where its transaction gets it. As
                # is: sending it as a response would route it by its Via, back to the SIP port.
                self.endpoint.transport.send_udp(
                    response.to_bytes(), (self.config.sip_listen, owner), self._via_local)
                return
            answer = self._relayed_answer(response)
            if answer is not None:  # the callee's 2xx again: to the caller as the first went
                response.headers.remove("via")
                for value in answer.vias:
                    response.headers.add("Via", value)
                response.set_body(answer.body)
            else:
                response.headers.pop_first_value("via")
            via = response.top_via
        except ParseError:
            return
        destination = response_destination(via)
        local = self._local(Hop(via.transport, destination)) if via.transport == "UDP" \
            else ("", 0)
        self.endpoint.send_stateless(response, Source(via.transport, destination, local))

    # -- CANCEL (RFC 3261 sections 9 and 16.10) --------------------------------------------------
    def _cancel(self, request: Request, tx: ServerTx) -> None:
        target = self.endpoint.layer.find_cancel_target(request)
        if target is None:
            self._reply(tx, 481)
            return
        self._reply(tx, 200)
        ctx = self.by_server.get(target)
        if ctx is None:
            if isinstance(target, InviteServerTransaction) and target.last_response is None:
                self.endpoint.reply(target, 487)
            return
        ctx.cancelled = True
        for branch in ctx.branches.values():
            if branch.final is None and branch.provisional:
                self._send_cancel(branch)

    def _cancel_others(self, ctx: ProxyContext, winner: ClientTx) -> None:
        ctx.decided = True  # branches that ring later are cancelled when they do
        for tx, branch in ctx.branches.items():
            if tx is not winner and branch.final is None and branch.provisional:
                self._send_cancel(branch)

    def _send_cancel(self, branch: Branch) -> None:
        original = branch.request
        h = original.headers
        cancel_headers = [("Via", h.first_value("via") or "")]
        cancel_headers += [("Route", v) for v in h.values("route")]
        cancel_headers += [
            ("Max-Forwards", "70"),
            ("From", h.get("from") or ""),
            ("To", h.get("to") or ""),
            ("Call-ID", original.call_id),
            ("CSeq", f"{original.cseq.seq} CANCEL"),
            ("Content-Length", "0"),
        ]
        cancel = Request("CANCEL", original.uri, Headers.of(cancel_headers))
        try:
            self.endpoint.send_request(cancel, branch.target.source(self._local(branch.target)))
        except Exception:  # a CANCEL already sent for this branch
            log.debug("CANCEL not sent", exc_info=True)

    # -- helpers --------------------------------------------------------------------------------
    def _reply(
        self,
        tx: ServerTx,
        status: int,
        reason: str | None = None,
        *,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        if tx.terminated:
            return
        self.endpoint.reply(tx, status, reason, to_tag=self._to_tag(tx.request), extra=extra)
        self.metrics.responses.add(1, {"class": f"{status // 100}xx"})

    def _to_tag(self, request: Request) -> str:
        return hashlib.sha1(f"{request.call_id}|{request.top_via.branch}".encode()).hexdigest()[:12]

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("request handling failed", exc_info=task.exception())

