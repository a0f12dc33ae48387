"""A small user agent server on the SIP core: answers OPTIONS, REGISTER, INVITE/ACK/BYE, CANCEL.

A lab tool (is SIP reaching this host, over which transport, what does it send?) and the peer
our interop tests point SIPp at. Registrations are kept in memory only: it is not a registrar.

    python -m services.sip.uas --listen 127.0.0.1:5070
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from services.sip.endpoint import SipEndpoint
from services.sip.message import Request, Response, make_response
from services.sip.transaction import ClientTx, ServerTx
from services.sip.transport import Source, install_event_loop_policy

log = logging.getLogger("volte.sip.uas")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER"
MAX_BINDINGS = 100_000  # bounded: this is a test peer, not a registrar
DEFAULT_EXPIRES = 3600


class SimpleUas:
    """The transaction user: one method per request it understands."""

    def __init__(self, *, answer_invites: bool = True) -> None:
        self.endpoint = SipEndpoint(self)
        self.bindings: dict[str, dict[str, int]] = {}  # AOR -> contact URI -> expires
        self.answer_invites = answer_invites
        self.requests_seen = 0

    def on_request(self, request: Request, tx: ServerTx | None, source: Source) -> None:
        self.requests_seen += 1
        if tx is None:
            return  # ACK for our 2xx: the call is up
        handler = {
            "OPTIONS": self._options,
            "REGISTER": self._register,
            "INVITE": self._invite,
            "BYE": self._ok,
            "CANCEL": self._cancel,
        }.get(request.method)
        if handler is None:
            self.endpoint.reply(tx, 405, extra=[("Allow", ALLOW)])
            return
        handler(request, tx)

    def on_response(self, response: Response, tx: ClientTx | None, source: Source) -> None:
        pass  # this UAS sends no requests

    def on_timeout(self, tx: ClientTx | ServerTx) -> None:
        log.info("transaction timed out", extra={"method": tx.request.method})

    # -- methods --------------------------------------------------------------------------------
    def _tag(self, request: Request) -> str:
        return f"uas{abs(hash(request.call_id)) % 10**10}"

    def _options(self, request: Request, tx: ServerTx) -> None:
        self.endpoint.reply(
            tx,
            200,
            to_tag=self._tag(request),
            extra=[("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", "")],
        )

    def _ok(self, request: Request, tx: ServerTx) -> None:
        self.endpoint.reply(tx, 200, to_tag=self._tag(request))

    def _register(self, request: Request, tx: ServerTx) -> None:
        aor = str(request.to.uri.replace(params={}, headers=()))
        default = request.expires if request.expires is not None else DEFAULT_EXPIRES
        contacts = request.contacts
        current = self.bindings.setdefault(aor, {})
        if contacts is None:  # "Contact: *"
            if default != 0:
                self.endpoint.reply(tx, 400, "Wildcard Contact needs Expires: 0")
                return
            current.clear()
        else:
            for contact in contacts:
                param = contact.params.get("expires")
                expires = int(param) if param and param.isdigit() else default
                if expires == 0:
                    current.pop(str(contact.uri), None)
                elif sum(map(len, self.bindings.values())) < MAX_BINDINGS:
                    current[str(contact.uri)] = expires
        extra = [("Contact", f"<{uri}>;expires={exp}") for uri, exp in current.items()]
        if not current:
            del self.bindings[aor]
        self.endpoint.reply(tx, 200, to_tag=self._tag(request), extra=extra)

    def _invite(self, request: Request, tx: ServerTx) -> None:
        if not self.answer_invites:
            self.endpoint.reply(tx, 486, to_tag=self._tag(request))
            return
        tag = self._tag(request)
        peer = tx.peer
        assert isinstance(peer, Source)
        # RFC 3261 section 12.1.1: the dialog's route set is the Record-Route we copy back.
        route_set = [("Record-Route", v) for v in request.headers.get_all("record-route")]
        contact = [*route_set, ("Contact", f"<sip:uas@{peer.local[0]}:{peer.local[1]}>")]
        self.endpoint.reply(tx, 180, to_tag=tag, extra=route_set)
        self.endpoint.respond(
            tx,
            make_response(request, 200, to_tag=tag, extra=contact, body=request.body,
                          content_type=request.headers.get("content-type")),
        )

    def _cancel(self, request: Request, tx: ServerTx) -> None:
        target = self.endpoint.layer.find_cancel_target(request)
        if target is None:
            self.endpoint.reply(tx, 481)
            return
        self.endpoint.reply(tx, 200, to_tag=self._tag(request))
        if target.last_response is None or target.last_response.status < 200:
            self.endpoint.reply(target, 487, to_tag=self._tag(target.request))


async def serve(host: str, port: int) -> None:
    uas = SimpleUas()
    bound = await uas.endpoint.listen(host, port)
    log.info("SIP UAS listening", extra={"address": f"{bound[0]}:{bound[1]}"})
    print(f"listening on {bound[0]}:{bound[1]} (UDP and TCP)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await uas.endpoint.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.sip.uas", description=__doc__)
    parser.add_argument("--listen", default=os.environ.get("VOLTE_LISTEN", "127.0.0.1:5070"),
                        help="host:port for UDP and TCP (default 127.0.0.1:5070)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        parser.error(f"--listen {args.listen!r}: expected host:port")
    logging.basicConfig(level=logging.INFO)
    install_event_loop_policy()
    asyncio.run(serve(host.strip("[]") or "127.0.0.1", int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
