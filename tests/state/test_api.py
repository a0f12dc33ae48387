"""volte.v1.StateStore through a real gRPC client, server and redis-server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2

from tests.state.helpers import UE_A, Api, change, digest, register, subscriber
from volte.v1 import common_pb2, state_pb2

pytestmark = pytest.mark.interop
Result = state_pb2.RegisterResponse.Result
UE_B = ("198.51.100.20", 5062)


async def put(api: Api, *subs: state_pb2.Subscriber) -> None:
    for sub in subs:
        await api.stub.PutSubscriber(state_pb2.PutSubscriberRequest(subscriber=sub))


async def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value.code()


def route(caller: str, source: tuple[str, int], callee: str = "") -> state_pb2.RouteRequest:
    return state_pb2.RouteRequest(
        caller_impu=caller,
        source=common_pb2.SocketAddress(ip=source[0], port=source[1]),
        transport=common_pb2.SIP_TRANSPORT_UDP,
        callee_impu=callee,
    )


# --- subscribers ------------------------------------------------------------------------------


async def test_subscriber_by_impi_and_by_impu(api: Api):
    sub = subscriber(1)
    assert await api.stub.PutSubscriber(state_pb2.PutSubscriberRequest(subscriber=sub)) == sub
    by_impi = await api.stub.GetSubscriber(state_pb2.GetSubscriberRequest(impi=sub.impi))
    by_tel = await api.stub.GetSubscriber(state_pb2.GetSubscriberRequest(impu=sub.impus[1]))
    assert by_impi == by_tel == sub
    unknown = api.stub.GetSubscriber(state_pb2.GetSubscriberRequest(impu="sip:nobody@x"))
    assert await status_of(unknown) == grpc.StatusCode.NOT_FOUND


async def test_replacing_a_subscriber_moves_its_impus(api: Api):
    sub = subscriber(1)
    await put(api, sub)
    del sub.impus[1]
    sub.impus.append("sip:alias@ims.local")
    await put(api, sub)
    old = api.stub.GetSubscriber(state_pb2.GetSubscriberRequest(impu="tel:+15550000001"))
    assert await status_of(old) == grpc.StatusCode.NOT_FOUND
    new = await api.stub.GetSubscriber(state_pb2.GetSubscriberRequest(impu="sip:alias@ims.local"))
    assert new.impi == sub.impi


async def test_an_impu_belongs_to_one_subscriber(api: Api):
    await put(api, subscriber(1))
    thief = subscriber(2)
    thief.impus.append(subscriber(1).impus[0])
    call = api.stub.PutSubscriber(state_pb2.PutSubscriberRequest(subscriber=thief))
    assert await status_of(call) == grpc.StatusCode.ALREADY_EXISTS
    missing = api.stub.GetSubscriber(state_pb2.GetSubscriberRequest(impi=thief.impi))
    assert await status_of(missing) == grpc.StatusCode.NOT_FOUND


async def test_list_subscribers_pages_in_impi_order(api: Api):
    await put(api, *(subscriber(n) for n in (5, 3, 1, 4, 2)))
    seen, after = [], ""
    while True:
        page = await api.stub.ListSubscribers(
            state_pb2.ListSubscribersRequest(after_impi=after, limit=2)
        )
        if not page.subscribers:
            break
        assert len(page.subscribers) <= 2
        seen += [s.impi for s in page.subscribers]
        after = seen[-1]
    assert seen == [subscriber(n).impi for n in range(1, 6)]


async def test_delete_subscriber_takes_its_bindings(api: Api):
    sub = subscriber(1)
    await put(api, sub)
    await api.stub.Register(register(sub, change(sub.impus[0]), change(sub.impus[0], "sip:b@h")))
    deleted = await api.stub.DeleteSubscriber(state_pb2.DeleteSubscriberRequest(impi=sub.impi))
    assert (deleted.deleted, deleted.bindings_removed) == (True, 2)
    lookup = await api.stub.LookupBindings(state_pb2.LookupBindingsRequest(impu=sub.impus[0]))
    assert list(lookup.bindings) == []
    again = await api.stub.DeleteSubscriber(state_pb2.DeleteSubscriberRequest(impi=sub.impi))
    assert (again.deleted, again.bindings_removed) == (False, 0)


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("GetSubscriber", state_pb2.GetSubscriberRequest(), "impi or impu is required"),
        ("PutSubscriber", state_pb2.PutSubscriberRequest(), "subscriber.impi is required"),
        (
            "PutSubscriber",
            state_pb2.PutSubscriberRequest(subscriber=state_pb2.Subscriber(impi="a b")),
            "without spaces",
        ),
        ("DeleteSubscriber", state_pb2.DeleteSubscriberRequest(), "impi is required"),
        ("ListSubscribers", state_pb2.ListSubscribersRequest(limit=5000), "at most 1000"),
        ("LookupBindings", state_pb2.LookupBindingsRequest(), "impu is required"),
        ("SaveBinding", state_pb2.SaveBindingRequest(), "binding.impu is required"),
        (
            "SaveBinding",
            state_pb2.SaveBindingRequest(
                binding=change("sip:a@h").binding, expires=Duration(seconds=-5)
            ),
            "expires must not be negative",
        ),
        (
            "SaveBinding",
            state_pb2.SaveBindingRequest(binding=change("sip:a@h").binding),
            "expires is required",
        ),
        ("Register", state_pb2.RegisterRequest(), "auth.username is required"),
        (
            "Register",
            state_pb2.RegisterRequest(
                auth=digest("u"), impu="sip:a@h", remove_all=True, changes=[change("sip:a@h")]
            ),
            "remove_all takes no changes",
        ),
        ("Route", route("sip:a@h", ("", 0)), "source is required"),
        ("PutDialog", state_pb2.PutDialogRequest(), "dialog.id.call_id is required"),
        ("GetDialog", state_pb2.GetDialogRequest(), "id.call_id is required"),
        ("PutMediaSession", state_pb2.PutMediaSessionRequest(), "session_id is required"),
    ],
)
async def test_bad_arguments_are_invalid_argument(api: Api, method, request_, message):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await getattr(api.stub, method)(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.value.details() or "")


# --- Register ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_register(api: Api, algorithm: str):
    sub = subscriber(1)
    await put(api, sub)
    response = await api.stub.Register(register(sub, algorithm=algorithm))
    assert response.result == Result.RESULT_OK
    [binding] = response.bindings
    assert (binding.impu, binding.imsi) == (sub.impus[0], sub.imsi)
    assert binding.contact_uri == "sip:ue@192.0.2.10:5060"
    assert binding.expires_at.seconds == 1_700_000_000 + 3600
    assert list(response.subscriber.impus) == list(sub.impus)
    assert response.subscriber.credentials.ha1_md5 == ""  # HA1s stay in the store
    lookup = await api.stub.LookupBindings(state_pb2.LookupBindingsRequest(impu=sub.impus[0]))
    assert list(lookup.bindings) == [binding]


@pytest.mark.parametrize(
    "auth",
    [
        {"password": "wrong"},
        {"realm": "other.realm"},
        {"algorithm": "SHA-256", "password": "wrong"},
    ],
)
async def test_wrong_credentials_are_unauthorized(api: Api, auth):
    sub = subscriber(1)
    await put(api, sub)
    response = await api.stub.Register(register(sub, **auth))
    assert response.result == Result.RESULT_UNAUTHORIZED
    assert not response.bindings
    lookup = await api.stub.LookupBindings(state_pb2.LookupBindingsRequest(impu=sub.impus[0]))
    assert not lookup.bindings


async def test_unknown_user_is_unauthorized(api: Api):
    response = await api.stub.Register(register(subscriber(9)))
    assert response.result == Result.RESULT_UNAUTHORIZED


async def test_replayed_nonce_count_is_refused(api: Api):
    sub = subscriber(1)
    await put(api, sub)
    assert (await api.stub.Register(register(sub, nc=1))).result == Result.RESULT_OK
    assert (await api.stub.Register(register(sub, nc=1))).result == Result.RESULT_REPLAY
    assert (await api.stub.Register(register(sub, nc=2))).result == Result.RESULT_OK
    assert (await api.stub.Register(register(sub, nc=2))).result == Result.RESULT_REPLAY
    other_nonce = register(sub, nc=1, nonce="nonce-2")
    assert (await api.stub.Register(other_nonce)).result == Result.RESULT_OK


async def test_foreign_impu_and_barred_are_forbidden(api: Api):
    alice, bob, barred = subscriber(1), subscriber(2), subscriber(3, barred=True)
    await put(api, alice, bob, barred)
    foreign = register(alice, change(bob.impus[0]), impu=bob.impus[0])
    assert (await api.stub.Register(foreign)).result == Result.RESULT_FORBIDDEN
    assert (await api.stub.Register(register(barred))).result == Result.RESULT_FORBIDDEN
    for impu in (bob.impus[0], barred.impus[0]):
        lookup = await api.stub.LookupBindings(state_pb2.LookupBindingsRequest(impu=impu))
        assert not lookup.bindings


async def test_several_contacts_ordered_by_q(api: Api):
    sub = subscriber(1)
    aor = sub.impus[0]
    await put(api, sub)
    await api.stub.Register(register(sub, change(aor, "sip:low@h", q_milli=100), nc=1))
    response = await api.stub.Register(
        register(sub, change(aor, "sip:high@h", q_milli=900, call_id="c2"), nc=2)
    )
    assert [b.contact_uri for b in response.bindings] == ["sip:high@h", "sip:low@h"]


async def test_expires_zero_and_remove_all(api: Api):
    sub = subscriber(1)
    aor = sub.impus[0]
    await put(api, sub)
    contacts = [change(aor, f"sip:ue{i}@h", call_id=f"c{i}") for i in range(3)]
    assert len((await api.stub.Register(register(sub, *contacts, nc=1))).bindings) == 3
    removal = change(aor, "sip:ue0@h", call_id="c0", cseq=2, expires=0)
    response = await api.stub.Register(register(sub, removal, nc=2))
    assert sorted(b.contact_uri for b in response.bindings) == ["sip:ue1@h", "sip:ue2@h"]
    response = await api.stub.Register(register(sub, remove_all=True, nc=3))
    assert response.result == Result.RESULT_OK
    assert not response.bindings


async def test_register_without_contacts_lists_the_bindings(api: Api):
    sub = subscriber(1)
    await put(api, sub)
    await api.stub.Register(register(sub, nc=1))
    query = register(sub, nc=2)
    del query.changes[:]
    response = await api.stub.Register(query)
    assert response.result == Result.RESULT_OK
    assert [b.contact_uri for b in response.bindings] == ["sip:ue@192.0.2.10:5060"]


async def test_stale_cseq_does_not_overwrite(api: Api):
    sub = subscriber(1)
    aor = sub.impus[0]
    await put(api, sub)
    first = await api.stub.Register(register(sub, change(aor, cseq=5, q_milli=500), nc=1))
    stale = await api.stub.Register(register(sub, change(aor, cseq=5, q_milli=900), nc=2))
    assert list(stale.bindings) == list(first.bindings)
    older = change(aor, cseq=4, expires=0)
    assert list((await api.stub.Register(register(sub, older, nc=3))).bindings) == list(
        first.bindings
    )
    # A higher CSeq, or another Call-ID (a rebooted UE), does update.
    newer = await api.stub.Register(register(sub, change(aor, cseq=6, q_milli=900), nc=4))
    assert newer.bindings[0].q_milli == 900
    rebooted = change(aor, call_id="new-call", cseq=1, q_milli=300)
    assert (await api.stub.Register(register(sub, rebooted, nc=5))).bindings[0].q_milli == 300


async def test_same_instance_replaces_its_old_contact(api: Api):
    sub = subscriber(1)
    aor = sub.impus[0]
    await put(api, sub)
    uuid = "<urn:uuid:00000000-0000-1000-8000-000000000001>"
    await api.stub.Register(register(sub, change(aor, "sip:ue@10.0.0.1", instance_id=uuid), nc=1))
    moved = change(aor, "sip:ue@10.0.0.2", instance_id=uuid, call_id="c2")
    response = await api.stub.Register(register(sub, moved, nc=2))
    assert [b.contact_uri for b in response.bindings] == ["sip:ue@10.0.0.2"]


async def test_save_and_remove_binding(api: Api):
    aor = "sip:+15550000001@ims.local"
    saved = await api.stub.SaveBinding(change(aor, "sip:a@h"))
    assert [b.contact_uri for b in saved.bindings] == ["sip:a@h"]
    await api.stub.SaveBinding(change(aor, "sip:b@h"))
    request = state_pb2.RemoveBindingRequest(impu=aor, contact_uri="sip:a@h")
    one = await api.stub.RemoveBinding(request)
    assert one.removed == 1
    rest = await api.stub.RemoveBinding(state_pb2.RemoveBindingRequest(impu=aor))
    assert rest.removed == 1
    assert not (await api.stub.LookupBindings(state_pb2.LookupBindingsRequest(impu=aor))).bindings


# --- Route ------------------------------------------------------------------------------------


async def test_route(api: Api):
    alice, bob, carol = subscriber(1), subscriber(2), subscriber(3)
    await put(api, alice, bob, carol)
    await api.stub.Register(register(alice, change(alice.impus[0], source=UE_A)))
    await api.stub.Register(register(bob, change(bob.impus[0], "sip:bob@h", source=UE_B)))

    ok = await api.stub.Route(route(alice.impus[0], UE_A, bob.impus[0]))
    assert ok.caller_registered and ok.asserted_impu == alice.impus[0]
    assert ok.caller_imsi == alice.imsi
    assert ok.callee_known and [b.contact_uri for b in ok.callee_bindings] == ["sip:bob@h"]

    wrong_port = await api.stub.Route(route(alice.impus[0], (UE_A[0], 5999), bob.impus[0]))
    assert not wrong_port.caller_registered and not wrong_port.caller_imsi

    # Dialled by the tel: form: the subscriber's registered sip: IMPU is reached.
    by_tel = await api.stub.Route(route(alice.impus[1], UE_A, bob.impus[1]))
    assert by_tel.caller_registered and by_tel.asserted_impu == alice.impus[1]
    assert [b.contact_uri for b in by_tel.callee_bindings] == ["sip:bob@h"]

    unregistered = await api.stub.Route(route(alice.impus[0], UE_A, carol.impus[0]))
    assert unregistered.callee_known and not unregistered.callee_bindings
    unknown = await api.stub.Route(route(alice.impus[0], UE_A, "sip:nobody@ims.local"))
    assert not unknown.callee_known and not unknown.callee_bindings


async def test_route_asserts_the_identity_registered_from_the_source(api: Api):
    alice, bob = subscriber(1), subscriber(2)
    await put(api, alice, bob)
    await api.stub.Register(register(alice, change(alice.impus[0], source=UE_A)))
    unknown_claim = await api.stub.Route(route("sip:someone@else", UE_A))
    assert unknown_claim.caller_registered
    assert unknown_claim.asserted_impu == alice.impus[0]  # the default IMPU
    spoofed = await api.stub.Route(route(bob.impus[0], UE_A))
    assert spoofed.caller_registered and spoofed.asserted_impu == alice.impus[0]
    assert spoofed.caller_imsi == alice.imsi
    stranger = await api.stub.Route(route("sip:someone@else", UE_B))
    assert not stranger.caller_registered and not stranger.asserted_impu


# --- dialogs and media sessions ---------------------------------------------------------------


def dialog_id(from_tag: str = "tagA", to_tag: str = "tagB") -> common_pb2.DialogId:
    return common_pb2.DialogId(call_id="call-1@192.0.2.10", from_tag=from_tag, to_tag=to_tag)


async def test_dialog_found_from_both_sides_and_early(api: Api):
    dialog = state_pb2.Dialog(
        id=dialog_id(to_tag=""),
        state=state_pb2.Dialog.STATE_EARLY,
        caller_impu="sip:+15550000001@ims.local",
        callee_impu="sip:+15550000002@ims.local",
        caller_cseq=1,
    )
    stored = await api.stub.PutDialog(state_pb2.PutDialogRequest(dialog=dialog))
    assert stored.created_at.seconds == 1_700_000_000
    early = await api.stub.GetDialog(state_pb2.GetDialogRequest(id=dialog_id(to_tag="")))
    assert early.state == state_pb2.Dialog.STATE_EARLY

    dialog.id.to_tag = "tagB"
    dialog.state = state_pb2.Dialog.STATE_CONFIRMED
    await api.stub.PutDialog(state_pb2.PutDialogRequest(dialog=dialog, ttl=Duration(seconds=1800)))
    for lookup in (dialog_id(), dialog_id("tagB", "tagA"), dialog_id(to_tag="")):
        found = await api.stub.GetDialog(state_pb2.GetDialogRequest(id=lookup))
        assert found.state == state_pb2.Dialog.STATE_CONFIRMED
        assert found.id == dialog_id()
        assert found.created_at == stored.created_at
        assert found.expires_at.seconds == 1_700_000_000 + 1800

    other_fork = api.stub.GetDialog(state_pb2.GetDialogRequest(id=dialog_id(to_tag="tagC")))
    assert await status_of(other_fork) == grpc.StatusCode.NOT_FOUND
    swapped = dialog_id("tagB", "tagA")
    deleted = await api.stub.DeleteDialog(state_pb2.DeleteDialogRequest(id=swapped))
    assert deleted.deleted
    gone = api.stub.GetDialog(state_pb2.GetDialogRequest(id=dialog_id()))
    assert await status_of(gone) == grpc.StatusCode.NOT_FOUND
    again = await api.stub.DeleteDialog(state_pb2.DeleteDialogRequest(id=dialog_id()))
    assert not again.deleted


async def test_forks_and_cancel(api: Api):
    early, confirmed = state_pb2.Dialog.STATE_EARLY, state_pb2.Dialog.STATE_CONFIRMED
    for to_tag, state in (("fork1", early), ("fork2", early), ("fork3", confirmed)):
        dialog = state_pb2.Dialog(id=dialog_id(to_tag=to_tag), state=state)
        ttl = Duration(seconds=60)
        await api.stub.PutDialog(state_pb2.PutDialogRequest(dialog=dialog, ttl=ttl))
    # A CANCEL (no To tag) ends the early forks; the answered one (200 crossed it) stays.
    cancel = await api.stub.DeleteDialog(state_pb2.DeleteDialogRequest(id=dialog_id(to_tag="")))
    assert cancel.deleted
    for to_tag in ("fork1", "fork2"):
        gone = api.stub.GetDialog(state_pb2.GetDialogRequest(id=dialog_id(to_tag=to_tag)))
        assert await status_of(gone) == grpc.StatusCode.NOT_FOUND
    kept = await api.stub.GetDialog(state_pb2.GetDialogRequest(id=dialog_id(to_tag="")))
    assert kept.id.to_tag == "fork3" and kept.state == confirmed


async def test_media_session(api: Api):
    record = state_pb2.MediaSessionRecord(
        session_id="m-1",
        dialog=dialog_id(),
        media_instance="media-0",
        caller_side_relay=[common_pb2.SocketAddress(ip="203.0.113.5", port=30000)],
    )
    request = state_pb2.PutMediaSessionRequest(session=record, ttl=Duration(seconds=60))
    stored = await api.stub.PutMediaSession(request)
    assert stored.expires_at.seconds == 1_700_000_060
    got = await api.stub.GetMediaSession(state_pb2.GetMediaSessionRequest(session_id="m-1"))
    assert got == stored
    assert (
        await api.stub.DeleteMediaSession(state_pb2.DeleteMediaSessionRequest(session_id="m-1"))
    ).deleted
    gone = api.stub.GetMediaSession(state_pb2.GetMediaSessionRequest(session_id="m-1"))
    assert await status_of(gone) == grpc.StatusCode.NOT_FOUND


async def test_health_is_serving_with_redis_up(api: Api):
    for _ in range(50):
        response = await api.health.Check(health_pb2.HealthCheckRequest(service=""))
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            break
        await __import__("asyncio").sleep(0.02)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
