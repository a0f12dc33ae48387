"""The store on Redis Sentinel and on Redis Cluster (real redis-server processes): the URL
forms connect, and every script keeps to one slot (a cluster refuses anything else)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from google.protobuf.duration_pb2 import Duration

from services.state.store import RedisStore
from tests.state.helpers import (
    REDIS_SERVER,
    UE_A,
    FakeClock,
    RedisProcess,
    change,
    free_port,
    register,
    subscriber,
    wait_for_ping,
)
from volte.v1 import common_pb2, state_pb2

pytestmark = pytest.mark.interop


async def exercise(store: RedisStore, clock: FakeClock) -> None:
    """One of everything, as the sbc would do it."""
    alice, bob = subscriber(1), subscriber(2)
    await store.put_subscriber(alice)
    await store.put_subscriber(bob)
    assert [s.impi for s in await store.list_subscribers()] == [alice.impi, bob.impi]
    reg = await store.register(register(alice, change(alice.impus[0], source=UE_A)))
    assert reg.result == state_pb2.RegisterResponse.RESULT_OK
    bob_ue = change(bob.impus[0], "sip:bob@h", source=("10.9.9.9", 5060))
    await store.register(register(bob, bob_ue))
    routed = await store.route(
        state_pb2.RouteRequest(
            caller_impu="sip:unknown@x",
            source=common_pb2.SocketAddress(ip=UE_A[0], port=UE_A[1]),
            callee_impu=bob.impus[1],
        )
    )
    assert routed.caller_registered and routed.asserted_impu == alice.impus[0]
    assert [b.contact_uri for b in routed.callee_bindings] == ["sip:bob@h"]
    dialog_id = common_pb2.DialogId(call_id="c1", from_tag="a", to_tag="b")
    dialog = state_pb2.Dialog(id=dialog_id, state=state_pb2.Dialog.STATE_CONFIRMED)
    await store.put_dialog(dialog, Duration(seconds=60))
    assert await store.get_dialog(common_pb2.DialogId(call_id="c1", from_tag="b", to_tag="a"))
    media = state_pb2.MediaSessionRecord(session_id="m1")
    await store.put_media_session(media, Duration(seconds=60))
    clock.advance(3601)
    fired = await store.sweep()
    assert (fired["binding"], fired["dialog"], fired["media"]) == (2, 1, 1)
    assert await store.delete_subscriber(alice.impi) == (True, 0)


@pytest.fixture
def sentinel(redis_process: RedisProcess, redis_url: str, tmp_path: Path) -> Iterator[int]:
    assert REDIS_SERVER is not None
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor volte 127.0.0.1 {redis_process.port} 1\n"
    )
    proc = subprocess.Popen(
        [REDIS_SERVER, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_ping(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_sentinel(sentinel: int, clock: FakeClock):
    store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{sentinel}/volte/0", clock=clock)
    deadline = time.monotonic() + 5
    while True:  # the sentinel needs a moment to see its master
        try:
            await store.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    await exercise(store, clock)
    await store.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[int]:
    nodes = [RedisProcess(tmp_path / f"node{i}") for i in range(3)]
    try:
        for node in nodes:
            node.extra_args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
            node.extra_args += ["--cluster-config-file", str(node.dir / "nodes.conf")]
            # The bus port defaults to port + 10000, which can be past 65535.
            node.extra_args += ["--cluster-port", str(free_port())]
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 10
        for node in nodes:
            with redis.Redis(port=node.port) as client:
                while client.cluster("info")["cluster_state"] != "ok":
                    assert time.monotonic() < deadline, "cluster did not form"
                    time.sleep(0.05)
        yield nodes[0].port
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
async def test_cluster(cluster: int, clock: FakeClock):
    store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{cluster}", clock=clock)
    await exercise(store, clock)
    await store.close()
