"""The registrar edge (RFC 3261 section 10) with digest authentication (RFC 7616/8760).

A REGISTER without credentials is challenged with a nonce any instance can verify; one with
credentials goes to the state store in a single Register call, which checks the answer against
the stored HA1 (and the nonce-count against replays) and applies the binding changes together.
"""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration

from services.sbc.config import SbcConfig
from services.sbc.state_client import StateClient, transport_enum
from services.sip.digest import Challenge, Credentials, NonceState, check_nonce, make_nonce
from services.sip.endpoint import SipEndpoint
from services.sip.errors import ParseError
from services.sip.message import Request
from services.sip.transaction import ServerTx
from services.sip.transport import Source
from volte.v1 import common_pb2, state_pb2


def aor(uri_user: str | None, host: str, scheme: str) -> str:
    return f"{scheme}:{uri_user or ''}@{host.lower()}"


class Registrar:
    def __init__(
        self, config: SbcConfig, state: StateClient, key: bytes, endpoint: SipEndpoint
    ) -> None:
        self.config = config
        self.state = state
        self.key = key
        self.endpoint = endpoint

    def _challenge(self, tx: ServerTx, stale: bool = False) -> int:
        nonce = make_nonce(self.key, time.time())
        realm = self.config.domain
        extra = [
            ("WWW-Authenticate", Challenge(realm, nonce, alg, stale=stale).header_value())
            for alg in self.config.digest_algorithm_list
        ]
        self.endpoint.reply(tx, 401, to_tag=_tag(tx), extra=extra)
        return 401

    async def handle(self, request: Request, tx: ServerTx, source: Source) -> int:
        to_uri = request.to.uri
        if not to_uri.is_sip or to_uri.host_lower != self.config.domain.lower():
            self.endpoint.reply(tx, 403, "Not Our Domain", to_tag=_tag(tx))
            return 403
        impu = aor(to_uri.user_unescaped, to_uri.host, to_uri.scheme)
        default = request.expires
        contacts = request.contacts
        changes: list[state_pb2.SaveBindingRequest] = []
        remove_all = False
        if contacts is None:  # "Contact: *"
            if default != 0 or len(request.headers.values("contact")) != 1:
                raise ParseError("Contact: * needs Expires: 0 and no other Contact")
            remove_all = True
        else:
            for contact in contacts:
                param = contact.params.get("expires")
                wanted = int(param) if param and param.isdigit() else default
                if wanted is None:
                    wanted = self.config.default_expires
                if 0 < wanted < self.config.min_expires:
                    self.endpoint.reply(
                        tx, 423, to_tag=_tag(tx),
                        extra=[("Min-Expires", str(self.config.min_expires))],
                    )
                    return 423
                granted = min(wanted, self.config.max_expires)
                changes.append(self._change(request, contact.uri, contact.params, impu,
                                            granted, source))
        auth_value = request.headers.get("authorization")
        if auth_value is None:
            return self._challenge(tx)
        creds = Credentials.parse(auth_value)
        nonce_state = check_nonce(self.key, creds.nonce, time.time(), self.config.nonce_lifetime)
        if nonce_state is not NonceState.VALID or creds.realm != self.config.domain:
            return self._challenge(tx, stale=nonce_state is NonceState.STALE)
        lifetime = Duration()
        lifetime.FromMilliseconds(int(self.config.nonce_lifetime * 1000))
        result = await self.state.register(
            state_pb2.RegisterRequest(
                auth=state_pb2.DigestAnswer(
                    username=creds.username, realm=creds.realm, nonce=creds.nonce, uri=creds.uri,
                    response=creds.response, algorithm=creds.algorithm, qop=creds.qop or "",
                    nc=creds.nc, cnonce=creds.cnonce, method="REGISTER",
                    nonce_lifetime=lifetime,
                ),
                impu=impu,
                changes=changes,
                remove_all=remove_all,
            )
        )
        if result.result in (
            state_pb2.RegisterResponse.RESULT_UNAUTHORIZED, state_pb2.RegisterResponse.RESULT_REPLAY
        ):
            return self._challenge(tx)
        if result.result != state_pb2.RegisterResponse.RESULT_OK:
            self.endpoint.reply(tx, 403, to_tag=_tag(tx))
            return 403
        now = time.time()
        extra = [
            ("Contact", f"<{b.contact_uri}>;expires={_remaining(b, now)}")
            for b in result.bindings
        ]
        if request.headers.get("path") and any(
            t.lower() == "path" for t in request.headers.values("supported")
        ):
            extra += [("Path", v) for v in request.headers.values("path")]
        host = self.config.advertised
        extra.append(("Service-Route", f"<sip:orig@{host}:{self.endpoint_port()};lr>"))
        if result.subscriber.impus:
            extra.append(
                ("P-Associated-URI", ", ".join(f"<{u}>" for u in result.subscriber.impus))
            )
        extra.append(("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))))
        self.endpoint.reply(tx, 200, to_tag=_tag(tx), extra=extra)
        return 200

    def endpoint_port(self) -> int:
        addresses = self.endpoint.transport.udp_addresses
        return addresses[0][1] if addresses else self.config.sip_port

    def _change(
        self,
        request: Request,
        contact_uri: object,
        params: dict[str, str | None],
        impu: str,
        expires: int,
        source: Source,
    ) -> state_pb2.SaveBindingRequest:
        q = params.get("q")
        try:
            q_milli = int(float(q) * 1000) if q else 1000
        except ValueError:
            raise ParseError("bad Contact q-value") from None
        reg_id = params.get("reg-id")
        duration = Duration()
        duration.FromSeconds(expires)
        return state_pb2.SaveBindingRequest(
            binding=state_pb2.Binding(
                impu=impu,
                contact_uri=str(contact_uri),
                instance_id=(params.get("+sip.instance") or "").strip('"'),
                reg_id=int(reg_id) if reg_id and reg_id.isdigit() else 0,
                call_id=request.call_id,
                cseq=request.cseq.seq,
                q_milli=max(0, min(1000, q_milli)),
                path=request.headers.values("path"),
                received=common_pb2.SocketAddress(ip=source.remote[0], port=source.remote[1]),
                transport=transport_enum(source.transport),
                sbc_instance=self.config.instance,
            ),
            expires=duration,
        )


def _remaining(binding: state_pb2.Binding, now: float) -> int:
    expires_at = binding.expires_at.seconds + binding.expires_at.nanos / 1e9
    return max(0, round(expires_at - now))


def _tag(tx: ServerTx) -> str:
    return f"reg{abs(hash(tx.request.call_id)) % 10**10}"
