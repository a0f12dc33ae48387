"""RedisStore: subscribers, registrations, dialogs, media sessions and their timers on Redis.

The key layout and value framing are in keys.py, the atomic steps in scripts.py, the rules
in rules.py; this class runs them. Time comes from `clock` (seconds, like time.time), so
tests drive expiry without sleeping. Reads never return a record past its deadline, whether
or not a sweeper has removed it yet. Any instance's `sweep()` fires any instance's timers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from google.protobuf.duration_pb2 import Duration
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from services.state import keys, rules, scripts
from services.state.connect import RedisClient, connect
from services.state.resp import LeanScript
from services.state.rules import Conflict, check_token, require
from volte.v1 import common_pb2, state_pb2

Clock = Callable[[], float]
Result = state_pb2.RegisterResponse.Result

GRACE_MS = 60_000  # Redis TTL past a record's deadline: a safety net behind the timers
LIST_DEFAULT, LIST_MAX = 100, 1000


# An EARLY dialog older than this is a stale call (the state service's default too).
EARLY_DIALOG_TIMEOUT = 180.0


class RedisStore:
    def __init__(
        self,
        client: RedisClient,
        *,
        clock: Clock = time.time,
        early_dialog_timeout: float = EARLY_DIALOG_TIMEOUT,
        terminated_linger: float = 32.0,
        default_ttl: float = 7200.0,
    ) -> None:
        """`early_dialog_timeout`: an EARLY dialog older than this is a stale call and is
        removed; `terminated_linger`: how long a TERMINATED dialog stays; `default_ttl`: the
        lifetime of a new dialog or media session stored without a ttl."""
        self.redis = client
        self.cluster = isinstance(client, RedisCluster)  # asked once: a slow isinstance
        self.clock = clock
        self._early_ms = rules.to_ms(early_dialog_timeout)
        self._linger_ms = rules.to_ms(terminated_linger)
        self._default_ms = rules.to_ms(default_ttl)
        self._apply_bindings = client.register_script(scripts.APPLY_BINDINGS)
        self._put_record = client.register_script(scripts.PUT_RECORD)
        self._put_new_dialog = client.register_script(scripts.PUT_NEW_DIALOG)
        self._delete_records = client.register_script(scripts.DELETE_RECORDS)
        self._delete_dialog = client.register_script(scripts.DELETE_DIALOG)
        self._sweep = client.register_script(scripts.SWEEP)
        self._check_nc = client.register_script(scripts.CHECK_NONCE_COUNT)
        self._put_sub = client.register_script(scripts.PUT_SUBSCRIBER)
        self._get_sub = client.register_script(scripts.GET_SUBSCRIBER)
        self._list_subs = client.register_script(scripts.LIST_SUBSCRIBERS)
        self._delete_sub = client.register_script(scripts.DELETE_SUBSCRIBER)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 0.5,
        client_name: str | None = None,
        lean: bool = False,
        early_dialog_timeout: float = EARLY_DIALOG_TIMEOUT,
        clock: Clock = time.time,
    ) -> RedisStore:
        """See connect.py for the URL forms and `lean`; the rest as for the constructor."""
        # No **options passed on: mypyc (services/native.py) cannot describe that signature.
        client = connect(url, timeout=timeout, client_name=client_name, lean=lean)
        return cls(client, early_dialog_timeout=early_dialog_timeout, clock=clock)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        await self.redis.ping()

    def now_ms(self) -> int:
        return rules.to_ms(self.clock())

    # --- subscribers --------------------------------------------------------------------------

    async def put_subscriber(self, sub: state_pb2.Subscriber) -> state_pb2.Subscriber:
        """Create or replace; raises Conflict when an IMPU belongs to another IMPI."""
        rules.check_subscriber(sub)
        result = await self._put_sub(
            keys=[keys.subscriber(sub.impi), keys.impi_index()],
            args=[sub.impi, sub.SerializeToString(), keys.impu_prefix(), *sub.impus],
        )
        if result[0] == b"conflict":
            impu, owner = result[1].decode(), result[2].decode()
            raise Conflict(f"IMPU {impu} belongs to subscriber {owner}")
        return sub

    async def get_subscriber(
        self, *, impi: str = "", impu: str = ""
    ) -> state_pb2.Subscriber | None:
        """By IMPI, or when impi is empty by any of its IMPUs."""
        require(impi or impu, "impi or impu is required")
        raw = await self._get_sub(
            keys=[keys.impi_index()], args=[keys.subscriber(""), keys.impu_prefix(), impi, impu]
        )
        return None if raw is None else state_pb2.Subscriber.FromString(raw)

    async def list_subscribers(
        self, after_impi: str = "", limit: int = 0
    ) -> list[state_pb2.Subscriber]:
        """Ordered by IMPI, starting after `after_impi`; `limit` 0 means 100 (at most 1000)."""
        require(limit <= LIST_MAX, f"limit must be at most {LIST_MAX}")
        raw = await self._list_subs(
            keys=[keys.impi_index()],
            args=[keys.subscriber(""), after_impi, limit or LIST_DEFAULT],
        )
        return [state_pb2.Subscriber.FromString(pb) for pb in raw]

    async def delete_subscriber(self, impi: str) -> tuple[bool, int]:
        """Deletes the subscriber and its bindings: (deleted, bindings removed)."""
        check_token(impi, "impi")
        impus = await self._delete_sub(
            keys=[keys.subscriber(impi), keys.impi_index()], args=[impi, keys.impu_prefix()]
        )
        removed = 0
        for impu in impus:
            removed += await self.remove_binding(impu.decode())
        return bool(impus), removed

    # --- registrations ------------------------------------------------------------------------

    async def register(self, request: state_pb2.RegisterRequest) -> state_pb2.RegisterResponse:
        """Digest check, nonce-count replay check, IMPU check, then the binding changes."""
        auth = request.auth
        nonce_lifetime_ms = rules.check_answer(auth)
        check_token(request.impu, "impu")
        require(not (request.remove_all and request.changes), "remove_all takes no changes")
        for change in request.changes:
            rules.check_binding_change(change, request.impu)
        response = state_pb2.RegisterResponse()
        sub = await self.get_subscriber(impi=auth.username)
        nc = rules.answer_nonce_count(auth)
        if sub is None or nc is None or not rules.verify_answer(sub, auth):
            response.result = Result.RESULT_UNAUTHORIZED
            return response
        fresh = await self._check_nc(
            keys=[keys.nonce_count(sub.impi, auth.nonce)], args=[nc, nonce_lifetime_ms]
        )
        if not fresh:
            response.result = Result.RESULT_REPLAY
            return response
        if sub.barred or request.impu not in sub.impus:
            response.result = Result.RESULT_FORBIDDEN
            return response
        bindings = await self._apply(
            request.impu, request.changes, remove_all=request.remove_all, imsi=sub.imsi
        )
        response.result = Result.RESULT_OK
        response.bindings.extend(bindings)
        response.subscriber.CopyFrom(rules.public_view(sub))
        return response

    async def save_binding(self, change: state_pb2.SaveBindingRequest) -> list[state_pb2.Binding]:
        """Adds, refreshes or (expires 0) removes one contact; answers the AOR's bindings."""
        aor = change.binding.impu
        check_token(aor, "binding.impu")
        return await self._apply(aor, [change], remove_all=False, imsi=None)

    async def lookup_bindings(self, impu: str) -> list[state_pb2.Binding]:
        """Unexpired bindings of the AOR, highest q first, then the most recent."""
        check_token(impu, "impu")
        values = await self.redis.hvals(keys.registration(impu))
        return self._bindings(map(_bytes, values), self.now_ms())

    async def remove_binding(self, impu: str, contact_uri: str = "") -> int:
        """Removes one contact, or all of the AOR's with an empty contact_uri."""
        check_token(impu, "impu")
        check_token(contact_uri, "contact_uri", required=False)
        key = keys.registration(impu)
        fields = [contact_uri] if contact_uri else []
        deleted: int = await self._delete_records(
            keys=[key, keys.timers_for(key)], args=[self.now_ms(), GRACE_MS, *fields]
        )
        return deleted

    async def _apply(
        self,
        aor: str,
        changes: Sequence[state_pb2.SaveBindingRequest],
        *,
        remove_all: bool,
        imsi: str | None,
    ) -> list[state_pb2.Binding]:
        now = self.now_ms()
        args: list[str | int | bytes] = [now, GRACE_MS, "1" if remove_all else "0"]
        for change in changes:
            lifetime = rules.check_binding_change(change, aor)
            binding = state_pb2.Binding()
            binding.CopyFrom(change.binding)
            binding.impu = aor
            if imsi is not None:
                binding.imsi = imsi
            value = b""
            if lifetime:
                binding.expires_at.FromMilliseconds(now + lifetime)
                value = keys.frame_binding(
                    now + lifetime,
                    binding.SerializeToString(),
                    cseq=binding.cseq,
                    reg_id=binding.reg_id,
                    call_id=binding.call_id,
                    instance_id=binding.instance_id,
                )
            b = binding
            args += [b.contact_uri, b.call_id, b.cseq, b.instance_id, b.reg_id, value]
        key = keys.registration(aor)
        values = await self._apply_bindings(keys=[key, keys.timers_for(key)], args=args)
        bindings = self._bindings(values, now)
        changed = {c.binding.contact_uri for c in changes}
        for b in bindings:
            if b.contact_uri in changed and b.received.ip:
                ttl = b.expires_at.ToMilliseconds() - now + GRACE_MS
                await self.redis.set(keys.source(b.received.ip, b.received.port), aor, px=ttl)
        return bindings

    def _bindings(self, values: Iterable[bytes], now_ms: int) -> list[state_pb2.Binding]:
        live = [keys.unframe(v) for v in values]
        return rules.binding_order(
            state_pb2.Binding.FromString(f.payload) for f in live if f.deadline_ms > now_ms
        )

    # --- routing ------------------------------------------------------------------------------

    async def route(self, request: state_pb2.RouteRequest) -> state_pb2.RouteResponse:
        """Is the caller registered from `source` (and as whom), and where is the callee?

        Registration belongs to the subscriber: a binding of any of its IMPUs from `source`
        counts. When the claimed IMPU's subscriber has none, the subscriber registered from
        `source` is the caller, asserted with its default IMPU (as a P-CSCF does with a
        P-Preferred-Identity that is not the UE's own).
        """
        check_token(request.caller_impu, "caller_impu", required=False)
        check_token(request.callee_impu, "callee_impu", required=False)
        if request.caller_impu:
            require(request.source.ip, "source is required with caller_impu")
        require(request.source.port <= 65535, "source.port must be 0..65535")
        response = state_pb2.RouteResponse()
        # What the common case needs (both subscribers, the bindings of both IMPUs asked
        # for) in one pipelined round trip; anything further is read as before.
        claimed = request.caller_impu if request.source.ip else ""
        pre = await self._prefetch([claimed, request.callee_impu])
        caller = await self._identify_caller(
            request.caller_impu,
            request.source,
            ip_only=request.transport
            in (common_pb2.SIP_TRANSPORT_TCP, common_pb2.SIP_TRANSPORT_TLS),
            pre=pre,
        )
        callee = await self._callee(request.callee_impu, pre=pre)
        if caller is not None:
            response.caller_registered = True
            response.asserted_impu, response.caller_imsi = caller
        response.callee_known, callee_bindings = callee
        response.callee_bindings.extend(callee_bindings)
        return response

    async def _prefetch(self, impus: Iterable[str]) -> _Prefetched:
        """The subscriber and the bindings of each IMPU, in one pipeline (on a cluster, one
        round trip per node). A script the server does not know yet (restart, flush) is
        left out: the caller then reads it the usual way, which loads the script."""
        pre = _Prefetched()
        wanted = list(dict.fromkeys(i for i in impus if i))
        if not wanted:
            return pre
        if self.cluster:
            # redis-py refuses scripts in a cluster pipeline: concurrent calls instead.
            subs = asyncio.gather(*(self.get_subscriber(impu=i) for i in wanted))
            regs = asyncio.gather(*(self.lookup_bindings(i) for i in wanted))
            pre.subscribers = dict(zip(wanted, await subs, strict=True))
            pre.bindings = dict(zip(wanted, await regs, strict=True))
            return pre
        pipe = self.redis.pipeline(transaction=False)
        for impu in wanted:
            pipe.evalsha(  # what get_subscriber(impu=...) runs
                self._get_sub.sha, 1, keys.impi_index(),
                keys.subscriber(""), keys.impu_prefix(), "", impu,
            )
            pipe.hvals(keys.registration(impu))
        replies = await pipe.execute(raise_on_error=False)
        now = self.now_ms()
        for impu, raw, values in zip(wanted, replies[::2], replies[1::2], strict=True):
            for reply in (raw, values):
                if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                    raise reply
            if not isinstance(raw, Exception):
                pre.subscribers[impu] = (
                    None if raw is None else state_pb2.Subscriber.FromString(raw)
                )
            if not isinstance(values, Exception):
                pre.bindings[impu] = self._bindings(map(_bytes, values), now)
        return pre

    async def _subscriber_of(self, impu: str, pre: _Prefetched) -> state_pb2.Subscriber | None:
        if impu in pre.subscribers:
            return pre.subscribers[impu]
        return await self.get_subscriber(impu=impu)

    async def _bindings_of(self, impu: str, pre: _Prefetched) -> list[state_pb2.Binding]:
        if impu in pre.bindings:
            return pre.bindings[impu]
        return await self.lookup_bindings(impu)

    async def _identify_caller(
        self,
        claimed: str,
        source: common_pb2.SocketAddress,
        *,
        ip_only: bool = False,
        pre: _Prefetched | None = None,
    ) -> tuple[str, str] | None:
        """(asserted IMPU, IMSI) of the subscriber registered from `source`, or None."""
        if not source.ip:
            return None
        pre = pre or _Prefetched()
        if claimed:
            sub = await self._subscriber_of(claimed, pre)
            if sub is not None and await self._registered_from(
                sub, source, first=claimed, ip_only=ip_only, pre=pre
            ):
                return claimed, sub.imsi
        hint = await self.redis.get(keys.source(source.ip, source.port))
        if hint is None:
            return None
        aor = _bytes(hint).decode()
        sub = await self._subscriber_of(aor, pre)
        if sub is None or not await self._registered_from(
            sub, source, first=aor, ip_only=ip_only, pre=pre
        ):
            return None
        return (claimed if claimed in sub.impus else sub.impus[0]), sub.imsi

    async def _registered_from(
        self,
        sub: state_pb2.Subscriber,
        source: common_pb2.SocketAddress,
        *,
        first: str,
        ip_only: bool = False,
        pre: _Prefetched,
    ) -> bool:
        if sub.barred:
            return False
        for impu in [first, *(i for i in sub.impus if i != first)]:
            bindings = await self._bindings_of(impu, pre)
            if any(rules.same_source(b.received, source, ip_only=ip_only) for b in bindings):
                return True
        return False

    async def _callee(
        self, impu: str, *, pre: _Prefetched | None = None
    ) -> tuple[bool, list[state_pb2.Binding]]:
        """(known, bindings): the AOR's own bindings, else those of the subscriber's other
        IMPUs (its implicit registration set: tel: and sip: forms of one number)."""
        if not impu:
            return False, []
        pre = pre or _Prefetched()
        sub = await self._subscriber_of(impu, pre)
        if sub is None:
            return False, []
        for aor in [impu, *(i for i in sub.impus if i != impu)]:
            bindings = await self._bindings_of(aor, pre)
            if bindings:
                return True, bindings
        return True, []

    # --- dialogs ------------------------------------------------------------------------------

    async def put_dialog(self, dialog: state_pb2.Dialog, ttl: Duration) -> state_pb2.Dialog:
        """Create or update; `ttl` 0 keeps the current expiry (a new dialog: its own
        expires_at if in the future, else default_ttl)."""
        rules.check_dialog_id(dialog.id, "dialog.id")
        require(dialog.state != state_pb2.Dialog.STATE_UNSPECIFIED, "dialog.state is required")
        ttl_ms = rules.duration_ms(ttl, "ttl", rules.MAX_EXPIRES_S)
        now = self.now_ms()
        key = keys.dialogs(dialog.id.call_id)
        field = keys.dialog_field(dialog.id.from_tag, dialog.id.to_tag)
        record = self._dialog_record(dialog, None, ttl_ms, now)
        # Optimistic: a new dialog (the sbc's case) is written in one round trip. When the
        # dialog is stored already, the script hands back the stored one to merge with.
        found = await self._put_new_dialog(
            keys=[key, keys.timers_for(key)],
            args=[
                now, GRACE_MS, field, self._dialog_value(record, now),
                *rules.stored_dialog_candidates(dialog.id.from_tag, dialog.id.to_tag),
            ],
        )
        if not isinstance(found, list):
            return record
        old_field = _bytes(found[0]).decode()
        old = state_pb2.Dialog.FromString(keys.unframe(_bytes(found[1])).payload)
        record = self._dialog_record(dialog, old, ttl_ms, now)
        old_fields = [old_field] if old_field != field else []
        await self._put_record(
            keys=[key, keys.timers_for(key)],
            args=[now, GRACE_MS, field, self._dialog_value(record, now), *old_fields],
        )
        return record

    def _dialog_record(
        self, dialog: state_pb2.Dialog, old: state_pb2.Dialog | None, ttl_ms: int, now: int
    ) -> state_pb2.Dialog:
        record = state_pb2.Dialog()
        record.CopyFrom(dialog)
        self._set_times(record, old, ttl_ms, now)
        return record

    def _dialog_value(self, record: state_pb2.Dialog, now: int) -> bytes:
        deadline = rules.dialog_deadline(
            record, now, early_ms=self._early_ms, linger_ms=self._linger_ms
        )
        return keys.frame(deadline, record.SerializeToString())

    async def get_dialog(self, dialog_id: common_pb2.DialogId) -> state_pb2.Dialog | None:
        """Finds the dialog from either side's point of view (see rules.select_dialog)."""
        rules.check_dialog_id(dialog_id)
        stored = await self._dialogs(keys.dialogs(dialog_id.call_id), self.now_ms())
        field = rules.select_dialog(stored, dialog_id.from_tag, dialog_id.to_tag)
        return stored[field] if field else None

    async def delete_dialog(self, dialog_id: common_pb2.DialogId) -> list[state_pb2.Dialog]:
        """Deletes the dialog (found as by get_dialog) and returns what was deleted. Without
        to_tag: every dialog of the caller's tag not yet confirmed (all forks of a cancelled or
        failed call); a confirmed one is deleted by its full id only, so a 200 OK that crossed
        a CANCEL keeps its call."""
        rules.check_dialog_id(dialog_id)
        now = self.now_ms()
        key = keys.dialogs(dialog_id.call_id)
        if dialog_id.to_tag:  # select_dialog's choice, made by the script: one round trip
            candidates = rules.dialog_candidates(dialog_id.from_tag, dialog_id.to_tag)
            found: bytes | int = await self._delete_dialog(
                keys=[key, keys.timers_for(key)], args=[now, GRACE_MS, *candidates]
            )
            if isinstance(found, int):
                return []
            return [state_pb2.Dialog.FromString(keys.unframe(_bytes(found)).payload)]
        stored = await self._dialogs(key, now)
        fields = rules.unconfirmed_forks(stored, dialog_id.from_tag)
        if not fields:
            return []
        deleted: int = await self._delete_records(
            keys=[key, keys.timers_for(key)], args=[now, GRACE_MS, *fields]
        )
        return [stored[f] for f in fields] if deleted > 0 else []

    async def _dialogs(self, key: str, now_ms: int) -> dict[str, state_pb2.Dialog]:
        stored = await self.redis.hgetall(key)
        live = {_bytes(f).decode(): keys.unframe(_bytes(v)) for f, v in stored.items()}
        return {
            f: state_pb2.Dialog.FromString(v.payload)
            for f, v in live.items()
            if v.deadline_ms > now_ms
        }

    def _set_times(
        self,
        record: state_pb2.Dialog | state_pb2.MediaSessionRecord,
        old: state_pb2.Dialog | state_pb2.MediaSessionRecord | None,
        ttl_ms: int,
        now: int,
    ) -> None:
        """created_at: given, else the stored one's, else now. expires_at: now + ttl, else
        the stored one's, else the given one if in the future, else now + default_ttl."""
        if not record.HasField("created_at"):
            record.created_at.FromMilliseconds(
                old.created_at.ToMilliseconds() if old is not None else now
            )
        if ttl_ms:
            expires = now + ttl_ms
        elif old is not None:
            expires = old.expires_at.ToMilliseconds()
        elif record.expires_at.ToMilliseconds() > now:
            expires = record.expires_at.ToMilliseconds()
        else:
            expires = now + self._default_ms
        record.expires_at.FromMilliseconds(expires)

    # --- media sessions -----------------------------------------------------------------------

    async def put_media_session(
        self, session: state_pb2.MediaSessionRecord, ttl: Duration
    ) -> state_pb2.MediaSessionRecord:
        """Create or update; `ttl` as for put_dialog."""
        check_token(session.session_id, "session.session_id")
        ttl_ms = rules.duration_ms(ttl, "ttl", rules.MAX_EXPIRES_S)
        now = self.now_ms()
        old = await self._media(session.session_id, now)
        record = state_pb2.MediaSessionRecord()
        record.CopyFrom(session)
        self._set_times(record, old, ttl_ms, now)
        key = keys.media(session.session_id)
        deadline = record.expires_at.ToMilliseconds()
        value = keys.frame(deadline, record.SerializeToString())
        await self._put_record(
            keys=[key, keys.timers_for(key)], args=[now, GRACE_MS, keys.MEDIA_FIELD, value]
        )
        return record

    async def get_media_session(self, session_id: str) -> state_pb2.MediaSessionRecord | None:
        check_token(session_id, "session_id")
        return await self._media(session_id, self.now_ms())

    async def delete_media_session(self, session_id: str) -> bool:
        check_token(session_id, "session_id")
        key = keys.media(session_id)
        deleted: int = await self._delete_records(
            keys=[key, keys.timers_for(key)], args=[self.now_ms(), GRACE_MS, keys.MEDIA_FIELD]
        )
        return deleted > 0

    async def _media(self, session_id: str, now_ms: int) -> state_pb2.MediaSessionRecord | None:
        value = await self.redis.hget(keys.media(session_id), keys.MEDIA_FIELD)
        if value is None:
            return None
        framed = keys.unframe(_bytes(value))
        if framed.deadline_ms <= now_ms:
            return None
        return state_pb2.MediaSessionRecord.FromString(framed.payload)

    # --- timers -------------------------------------------------------------------------------

    async def sweep(self, limit: int = 200) -> Counter[str]:
        """Fires every due timer of every shard once: records expired, by kind ("binding",
        "dialog", "media"). Safe to run on every instance at once: each timer is claimed by
        exactly one of them."""
        now = self.now_ms()
        fired: Counter[str] = Counter()
        pending = keys.all_timer_keys()
        while pending:  # a shard with more due than `limit` goes round again
            replies = await self._script_many(
                self._sweep, [([timers], [now, GRACE_MS, limit]) for timers in pending]
            )
            again = []
            for timers, out in zip(pending, replies, strict=True):
                for key, dropped in zip(out[::2], out[1::2], strict=True):
                    fired[keys.kind_of(key.decode())] += dropped
                if len(out) >= 2 * limit:
                    again.append(timers)
            pending = again
        return fired

    async def _script_many(
        self, script: AsyncScript | LeanScript, calls: list[tuple[list[str], list[Any]]]
    ) -> list[Any]:
        """`script` once per (keys, args): pipelined in one round trip (sweeps run twice a
        second over every shard), or one call after another on a cluster, where redis-py
        refuses scripts in a pipeline."""
        if self.cluster:
            return [await script(keys=k, args=a) for k, a in calls]
        pipe = self.redis.pipeline(transaction=False)
        for k, a in calls:
            pipe.evalsha(script.sha, len(k), *k, *a)
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for (k, a), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):  # not loaded yet (restart, flush): this loads it
                reply = await script(keys=k, args=a)
            elif isinstance(reply, Exception):
                raise reply
            out.append(reply)
        return out


@dataclasses.dataclass
class _Prefetched:
    """What Route read ahead: subscriber (None: no such IMPU) and bindings by IMPU."""

    subscribers: dict[str, state_pb2.Subscriber | None] = dataclasses.field(default_factory=dict)
    bindings: dict[str, list[state_pb2.Binding]] = dataclasses.field(default_factory=dict)


def _bytes(value: bytes | str) -> bytes:
    """Replies are bytes (the client does not decode); this tells the type checker so."""
    return value if isinstance(value, bytes) else value.encode()
