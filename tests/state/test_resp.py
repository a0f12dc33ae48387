"""LeanRedis (the sbc's Redis client) against a real redis-server: replies matched to the
right callers when many share the connection, scripts reloaded after a flush, errors as
redis-py's classes, a hung server failing fast, a restarted one reconnected, and a password and
db taken from the URL. RedisStore's own behaviour on it is test_api.py's, run on both clients."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop
from redis import exceptions as errors

from services.state.resp import LeanRedis, _Connection, operation_deadline
from tests.state.helpers import RedisProcess

SCRIPT = "return {KEYS[1], ARGV[1]}"


Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Each test on asyncio's own loop and on uvloop's (the services run on uvloop)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run_on_loop(body: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(body)

    return run_on_loop


def lost(connection: _Connection) -> bool:
    return connection.lost


def lean(url: str, timeout: float = 0.5) -> LeanRedis:
    return LeanRedis.from_url(url, timeout=timeout, client_name="test-lean")


async def _concurrent_callers_get_their_own_replies(redis_url: str) -> None:
    client = lean(redis_url)
    try:
        assert await client.ping()
        await asyncio.gather(*(client.set(f"k{i}", f"v{i}", px=60_000) for i in range(200)))
        got = await asyncio.gather(*(client.get(f"k{i}") for i in range(200)))
        assert got == [f"v{i}".encode() for i in range(200)]
        assert await client.get("missing") is None
        await client.execute_command("HSET", "h", "a", "1", "b", "2")
        assert await client.hgetall("h") == {b"a": b"1", b"b": b"2"}
        assert sorted(await client.hvals("h")) == [b"1", b"2"]
        assert await client.hget("h", "b") == b"2"
        pipe = client.pipeline()
        pipe.hvals("h").evalsha("0" * 40, 0)
        replies = await pipe.execute(raise_on_error=False)
        assert sorted(replies[0]) == [b"1", b"2"]
        assert isinstance(replies[1], errors.NoScriptError)
        with pytest.raises(errors.ResponseError, match="WRONGTYPE"):
            await client.hvals("k1")
    finally:
        await client.aclose()


async def _a_script_is_loaded_again_after_a_flush(redis_url: str) -> None:
    client = lean(redis_url)
    script = client.register_script(SCRIPT)
    try:
        assert await script(keys=["a"], args=[1]) == [b"a", b"1"]
        await client.execute_command("SCRIPT", "FLUSH")
        assert await script(keys=["b"], args=["x"]) == [b"b", b"x"]
    finally:
        await client.aclose()


async def _a_hung_server_fails_fast_and_a_restarted_one_is_reconnected(
    tmp_path: Path,
) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    client = lean(server.url, timeout=0.3)
    try:
        assert await client.ping()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(client.ping(), client.get("x"),
                                           return_exceptions=True)
            assert all(isinstance(r, errors.TimeoutError) for r in results), results
            assert time.monotonic() - started < 1.0
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert await client.ping()  # a new connection: the old one was aborted
        server.stop()
        with pytest.raises(errors.ConnectionError):
            await client.ping()
        server.start()
        assert await client.ping()
    finally:
        await client.aclose()
        server.stop()


async def _a_worker_too_busy_to_read_is_not_a_hung_server(redis_url: str) -> None:
    """The watchdog's rules, driven directly (which callback a loop runs first when it was
    blocked differs between loops): a command past its timeout aborts the connection only if
    nothing at all came from Redis since it was sent, and only after the loop has polled; a
    command past its deadline fails on its own while Redis answers the others."""
    client = LeanRedis.from_url(redis_url, timeout=0.2, client_name="test-lean")
    try:
        assert await client.ping()
        connection = client._connection
        assert connection is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A command sent 0.3 s ago (past the timeout, before the deadline), its reply not
        # read; replies came meanwhile (a busy worker's deep pipeline): not a hung server.
        waiting = loop.create_future()
        connection.waiting.append((waiting, now - 0.3, connection.reads - 1, now + 0.1))
        connection._check()
        for _ in range(3):
            await asyncio.sleep(0)
        assert not lost(connection) and not waiting.done()
        # Past its deadline (0.4 s): that command fails, the connection stays.
        sent = now - 0.5
        connection.waiting[0] = (waiting, sent, connection.reads - 1, sent + connection.deadline)
        connection._check()
        assert not lost(connection)
        with pytest.raises(errors.TimeoutError, match=r"within 0\.4 s"):
            await waiting
        connection.waiting.popleft()
        assert await client.ping()  # the same connection still answers
        assert client._connection is connection
        # Nothing came since a command was sent 0.3 s ago: after two more turns of the loop,
        # the connection is given up.
        hung = loop.create_future()
        now = loop.time()
        connection.waiting.append((hung, now - 0.3, connection.reads, now + 0.1))
        connection._check()
        assert not lost(connection)
        for _ in range(3):
            await asyncio.sleep(0)
        assert lost(connection)
        with pytest.raises(errors.TimeoutError, match=r"within 0\.2 s"):
            await hung
        assert await client.ping()  # connected anew
        assert client._connection is not connection
    finally:
        await client.aclose()


async def _an_operation_deadline_bounds_its_commands(redis_url: str) -> None:
    """Commands sent under `operation_deadline` fail when it passes, though the connection's
    own deadline is later and Redis is not hung; the connection stays."""
    client = LeanRedis.from_url(redis_url, timeout=0.5, client_name="test-lean")
    try:
        assert await client.ping()
        connection = client._connection
        token = operation_deadline.set(asyncio.get_running_loop().time() + 0.1)
        try:
            started = time.monotonic()
            with pytest.raises(errors.TimeoutError, match="by the deadline of its operation"):
                await client.execute_command("BLPOP", "nothing-here", "0.4")
            assert time.monotonic() - started < 0.3
        finally:
            operation_deadline.reset(token)
        assert await client.ping()  # the blocked reply came and was dropped
        assert client._connection is connection
    finally:
        await client.aclose()


async def _one_turn_of_the_loop_is_one_write(redis_url: str) -> None:
    """Commands issued in the same turn of the event loop go to Redis in one write."""
    client = lean(redis_url)
    try:
        assert await client.ping()
        connection = client._connection
        assert connection is not None
        writes: list[bytes] = []
        flush = connection._flush
        def counting_flush() -> None:
            writes.append(b"".join(connection.outbox))
            flush()
        connection._flush = counting_flush  # type: ignore[method-assign]
        replies = await asyncio.gather(*(client.set(f"k{i}", i) for i in range(5)),
                                       client.get("k4"))
        assert replies == [True] * 5 + [b"4"]
        assert len(writes) == 1 and writes[0].count(b"SET") == 5 and b"GET" in writes[0]
    finally:
        await client.aclose()


async def _password_and_db_from_the_url(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.start()
    with redis.Redis(port=server.port) as admin:
        admin.config_set("requirepass", "s3cret")
    try:
        wrong = lean(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(errors.AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
        client = lean(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await client.set("where", "db3")
        with redis.Redis(port=server.port, password="s3cret", db=3) as check:
            assert check.get("where") == b"db3"
            assert "test-lean" in {c["name"] for c in check.client_list()}
        await client.aclose()
    finally:
        server.stop()


def test_an_operation_deadline_bounds_its_commands(run: Run, redis_url: str) -> None:
    run(_an_operation_deadline_bounds_its_commands(redis_url))


def test_one_turn_of_the_loop_is_one_write(run: Run, redis_url: str) -> None:
    run(_one_turn_of_the_loop_is_one_write(redis_url))


def test_only_standalone_urls() -> None:
    for url in ("rediss://h:1/0", "redis+sentinel://h:1/volte", "redis+cluster://h:1"):
        with pytest.raises(ValueError, match="redis:// and unix://"):
            lean(url)


def test_concurrent_callers_get_their_own_replies(run: Run, redis_url: str) -> None:
    run(_concurrent_callers_get_their_own_replies(redis_url))


def test_a_script_is_loaded_again_after_a_flush(run: Run, redis_url: str) -> None:
    run(_a_script_is_loaded_again_after_a_flush(redis_url))


def test_a_hung_server_fails_fast_and_a_restarted_one_is_reconnected(
    run: Run, tmp_path: Path
) -> None:
    run(_a_hung_server_fails_fast_and_a_restarted_one_is_reconnected(tmp_path))


def test_a_worker_too_busy_to_read_is_not_a_hung_server(run: Run, redis_url: str) -> None:
    run(_a_worker_too_busy_to_read_is_not_a_hung_server(redis_url))


def test_password_and_db_from_the_url(run: Run, tmp_path: Path) -> None:
    run(_password_and_db_from_the_url(tmp_path))
